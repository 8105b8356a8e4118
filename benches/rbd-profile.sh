#!/usr/bin/env bash
# rbd-profile.sh — where ferry's CPU goes on the RBD job: `perf record -g` on BOTH agents (the
# primary `ferry sync` process and the standby `ferry-agent`) during a full and then an
# incremental sync of the rbd-bench image (same seeded 2 GiB image and 4 KiB change set as
# benches/rbd-bench.sh), on the two-site Ceph lab. Prints, per side and job, the top symbols by
# self time (`perf report --no-children`), and each process's CPU-seconds; keeps the perf.data
# files under $LAB_DIR/rbd-profile/ for `perf report -i`.
#
#   benches/rbd-profile.sh
#
# Environment: FERRY_BIN_DIR (release binaries built with debug info, default target/release),
# FERRY_BENCH_SIZE (default 2G), FERRY_BENCH_CHANGE (default 128M of 4 KiB writes),
# FERRY_BENCH_PORT (default 47493), FERRY_PROFILE_TOP (symbols shown, default 25). Run as root,
# with the lab up (scripts/ceph-lab.sh up). Creates and removes only images named prof-*.
set -euo pipefail

# shellcheck source=benches/lib-ceph.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-ceph.sh"
REPO="$CEPH_LIB_REPO"
IMG_SIZE=$(to_bytes "${FERRY_BENCH_SIZE:-2G}")
CHANGE=$(to_bytes "${FERRY_BENCH_CHANGE:-128M}")
DELTA_COUNT=$((CHANGE / 4096))
PORT="${FERRY_BENCH_PORT:-47493}"
TOP="${FERRY_PROFILE_TOP:-25}"
BIN="${FERRY_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}"
FERRY="$BIN/ferry"
FAGENT="$BIN/ferry-agent"
[[ -x $FERRY && -x $FAGENT ]] || die "no release binaries in $BIN (or set FERRY_BIN_DIR)"
command -v perf >/dev/null || die "perf is missing: apt-get install linux-perf"

ceph_lib_init "$LAB_DIR/rbd-profile"
FA="$WORK/ferry-a"
FB="$WORK/ferry-b"
IMG=prof-img
AGENT_PID=""
on_exit() {
  local rc=$?
  if [[ -n $AGENT_PID ]]; then
    kill -INT "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
  fi
  cleanup_images prof- || log "cleanup of prof-* images failed"
  exit "$rc"
}
trap on_exit EXIT

# cpu_of PID: utime+stime of a live process, in seconds.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }

# threads DATA: share of samples per thread name (librados' io_context_pool, ferry's
# ferry-worker pipeline threads, tokio-rt-worker for QUIC, ...).
threads() {
  perf report -i "$1" --no-children --sort comm --stdio -g none --percent-limit 1 2>/dev/null |
    awk '/^ +[0-9.]+%/ { printf "%s %s; ", $1, $2 } END { print "" }'
}

# top_symbols DATA: the TOP symbols by self time.
top_symbols() {
  perf report -i "$1" --no-children --sort dso,symbol --stdio -g none --percent-limit 0.3 \
    2>/dev/null | awk -v top="$TOP" '/^ +[0-9.]+%/ && n < top { $1 = $1; print "  " $0; n++ }'
}

cleanup_images prof-
make_data
rm -rf "$FA" "$FB"
mkdir -p "$WORK"
FP_A=$("$FAGENT" init --dir "$FA" | tail -n 1)
FP_B=$("$FAGENT" init --dir "$FB" | tail -n 1)
printf '[standby]\nbackend = "rbd"\nrbd_pool = "rbd"\n[ceph]\ncluster = "%s"\n' "$B" >"$FB/config.toml"
printf '[ceph]\ncluster = "%s"\n' "$A" >"$FA/config.toml"
ra import --no-progress "$DATA" "rbd/$IMG"

for job in full incr; do
  if [[ $job == incr ]]; then
    h delta "$A" "$IMG" "$SEED" "$DELTA_COUNT" >/dev/null
  fi
  # A fresh standby agent per job, so its profile holds that job only.
  perf record -q -g -o "$WORK/standby-$job.data" -- \
    "$FAGENT" run --dir "$FB" --listen "127.0.0.1:$PORT" --trust "$FP_A" >"$WORK/agent-b-$job.log" 2>&1 &
  AGENT_PID=$!
  for ((i = 0; i < 300; i++)); do
    grep -qs 'ferry-agent ready' "$WORK/agent-b-$job.log" && break
    sleep 0.1
  done
  grep -q 'ferry-agent ready' "$WORK/agent-b-$job.log" || die "standby agent not ready"
  agent=$(pgrep -f -n "ferry-agent run --dir $FB") || die "standby agent process not found"
  before=$(cpu_of "$agent")
  t0=$(date +%s.%N)
  perf record -q -g -o "$WORK/primary-$job.data" -- \
    "$FERRY" sync --dir "$FA" "rbd:rbd/$IMG" "quic://127.0.0.1:$PORT/$IMG" --peer "$FP_B" \
    --json >"$WORK/$job.json"
  t1=$(date +%s.%N)
  after=$(cpu_of "$agent")
  kill -INT "$AGENT_PID"
  wait "$AGENT_PID" || true
  AGENT_PID=""
  echo "== $job sync: wall $(echo "$t1 - $t0" | bc) s; standby agent CPU $(echo "$after - $before" | bc) s;" \
    "$(jq -c '{bytes_changed, bytes_sent, udp_bytes, seconds}' "$WORK/$job.json")"
  echo "-- primary (ferry sync) threads: $(threads "$WORK/primary-$job.data")"
  top_symbols "$WORK/primary-$job.data"
  echo "-- standby (ferry-agent) threads: $(threads "$WORK/standby-$job.data")"
  top_symbols "$WORK/standby-$job.data"
done
log "perf data kept in $WORK/{primary,standby}-{full,incr}.data"
