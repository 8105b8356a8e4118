#!/usr/bin/env bash
# failover-bench.sh — how long recovery takes on RBD (issue 15): unplanned failover, DR drill start
# and end, and re-protect after a split brain against a full resync of the same volumes. Real agents
# (site-a primary, site-b RBD standby, both with an RBD standby backend, the two-site Ceph lab of
# scripts/ceph-lab.sh), driven through the `ferry` CLI.
#
#   [CASES="group20 single16"] benches/failover-bench.sh [--runs N] [--copy] [--full-only] [--write-md FILE]
#
# Cases (each a fresh group, each run a fresh pair of groups):
#   group20   20 volumes × 1 GiB
#   single16  one 16 GiB volume
# and for each: failover to the latest point (the standby images become the volumes in place) and to
# an older point (format-2 clones `failover-IMAGE`). With --copy the same cases with `--copy` (full
# copies, rbd_copy3), to compare. Volumes are thin, filled with FILL_MIB (default 64) MiB of seeded
# random data per volume (the group re-protected later, failed over at its latest point: 3/16 of
# each volume's size, 192 MiB of 1 GiB and 3 GiB of 16 GiB, or REPROTECT_FILL_MIB for every case)
# before the first point and 4 MiB more before the second; a --copy run copies only allocated data
# too.
# Timed: the wall time of `ferry group failover … --wait` (API + journal + storage work; the
# storage side alone is in the standby's log, "failover volume ready" lines); `group drill` and
# `group drill --end` on the standby before the disaster (latest group point); and, after the
# latest-point failover with site-a SIGKILLed, 64 MiB written on each side (1 MiB pieces spread
# over the volumes), site-a restarted, `group reprotect` on site-b — against `group start` of the
# same group at the beginning (ferry's full initial sync of the same volumes: what a full resync,
# rbd-mirror's path after a forced promote, has to move). Medians of N runs (default 3). Needs the
# binaries (cargo build --release --workspace --bins), python3-rbd (Debian's /usr/bin/python3: pyenv shims lack it), jq.
# Also recorded: each agent's peak RSS (VmHWM) and CPU seconds right after the first group's full
# initial sync: the most memory a sync takes (the single16 case is one image's sync: the baseline
# for the group's); the CPU includes the agents' start and the group's setup. --full-only stops each case there (memory runs: no failover, drill or reprotect).
# KEEP_WORK=1 keeps the agents' directories and logs (for a breakdown from their log lines).
# Leaves no image behind (ferry-bench-fo-* on both sites are removed at the end).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS=3
COPY=0
FULL_ONLY=0
WRITE_MD=""
FILL_MIB="${FILL_MIB:-64}"
# The group that is re-protected holds more data, so the full resync it is compared with moves a
# realistic amount: the same share of every volume (the lab's two 16 GiB OSD files bound it: 20
# full 1 GiB volumes do not fit twice). REPROTECT_FILL_MIB sets one fill for every case instead.
REPROTECT_FILL_MIB="${REPROTECT_FILL_MIB:-}"
reprotect_fill() { echo "${REPROTECT_FILL_MIB:-$(($1 * 3 / 16))}"; }
# Which cases run (CASES="group20" for the 20-volume group only).
CASES="${CASES:-group20 single16}"
while (($#)); do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --copy) COPY=1; shift ;;
    --full-only) FULL_ONLY=1; shift ;;
    --write-md) WRITE_MD="$2"; shift 2 ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
BIN="${FERRY_BIN_DIR:-${FERRY_BIN:-$REPO/target/release}}"
export PATH="$BIN:$PATH"
command -v ferry-agent >/dev/null || { echo "build first: cargo build --release --workspace --bins" >&2; exit 1; }
command -v jq >/dev/null || { echo "needs jq" >&2; exit 1; }
"$REPO/scripts/ceph-lab.sh" status >/dev/null || { echo "the Ceph lab is not up" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ferry-failover-bench.XXXXXX)
TAG="ferry-bench-fo-$$"
RES="$WORK/results.tsv"
PIDS=()

# purge_images: every RBD group and image of this run (ferry's RBD groups first: their group
# snapshots keep the images from being removed; clones before their parents).
purge_images() {
  local attempt
  # A SIGKILLed agent's watches on its images expire after ~30 s: until then `rbd rm` refuses.
  for attempt in 1 2 3 4 5; do
    purge_images_once
    if ! rbd --cluster site-a ls rbd | grep -q -- "$TAG" && ! rbd --cluster site-b ls rbd | grep -q -- "$TAG"; then
      return 0
    fi
    sleep 10
  done
  echo "warning: images of $TAG left in the lab" >&2
}

purge_images_once() {
  local site name names group
  for site in site-a site-b; do
    for group in $(rbd --cluster "$site" group ls rbd 2>/dev/null); do
      if rbd --cluster "$site" group image list "rbd/$group" 2>/dev/null | grep -q -- "$TAG"; then
        rbd --cluster "$site" group rm "rbd/$group" >/dev/null 2>&1 || true
      fi
    done
    names=$(rbd --cluster "$site" ls rbd | grep -- "$TAG" || true)
    # Clones (failover-…, the re-protected copies GROUP-…) before their parents ($TAG-…).
    for name in $(grep -v "^$TAG" <<<"$names") $(grep "^$TAG" <<<"$names"); do
      rbd --cluster "$site" --no-progress snap purge "rbd/$name" >/dev/null 2>&1 || true
      rbd --cluster "$site" --no-progress rm "rbd/$name" >/dev/null 2>&1 || true
    done
  done
}

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  purge_images
  if [[ -n "${KEEP_WORK:-}" ]]; then echo "agents' directories and logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Two agents: A on site-a, B an RBD standby on site-b, paired.
start_pair() {
  local a="$WORK/a$1" b="$WORK/b$1"
  ferry-agent init --dir "$a" >/dev/null
  ferry-agent init --dir "$b" >/dev/null
  printf '[standby]\nbackend = "rbd"\nrbd_pool = "rbd"\n[ceph]\ncluster = "site-a"\n' >"$a/config.toml"
  printf '[standby]\nbackend = "rbd"\nrbd_pool = "rbd"\n[ceph]\ncluster = "site-b"\n' >"$b/config.toml"
  # AGENT_CONFIG: more TOML for both agents (e.g. a [transport] section), to compare settings.
  [[ -n "${AGENT_CONFIG:-}" ]] && printf '%b\n' "$AGENT_CONFIG" | tee -a "$a/config.toml" >>"$b/config.toml"
  # A fixed QUIC port for A: the service on B names it, and A comes back on it after the SIGKILL.
  A_LISTEN="127.0.0.1:$((20000 + RANDOM % 20000))"
  ferry-agent run --dir "$a" --listen "$A_LISTEN" --api-listen 127.0.0.1:0 >"$a.log" 2>&1 & PIDS+=($!); A_PID=$!
  ferry-agent run --dir "$b" --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 >"$b.log" 2>&1 & PIDS+=($!); B_PID=$!
  until ferry --dir "$a" status >/dev/null 2>&1 && ferry --dir "$b" status >/dev/null 2>&1; do sleep 0.2; done
  ferry --dir "$a" service create --key "$(ferry --dir "$b" service key)" --name dr >/dev/null
  A="$a"; B="$b"
}

# fill SITE IMAGE MIB SEED: MIB MiB of seeded random data in 1 MiB pieces at random offsets.
fill() {
  /usr/bin/python3 - "$1" "$2" "$3" "$4" <<'EOF'
import sys, random, rados, rbd
site, image, mib, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = rados.Rados(clustername=site, conffile=f'/etc/ceph/{site}.conf'); c.connect()
io = c.open_ioctx('rbd'); img = rbd.Image(io, image); r = random.Random(seed)
slots = img.size() >> 20
for _ in range(mib):
    img.write(r.randbytes(1 << 20), r.randrange(0, slots) << 20)
img.close(); io.close(); c.shutdown()
EOF
}

# protect GROUP COUNT SIZE_MIB FILL_MIB: COUNT thin images with FILL_MIB MiB each, protected,
# replicated, two points. T_FULL: the full initial sync (start, then the first point's cycle).
protect() {
  local group=$1 count=$2 size=$3 fill_mib=$4 uris=() i
  for ((i = 0; i < count; i++)); do
    local img="$TAG-$group-$i"
    rbd --cluster site-a create --size "$size" "rbd/$img"
    fill site-a "$img" "$fill_mib" "$i"
    uris+=("rbd:rbd/$img")
  done
  ferry --dir "$A" group create "$group" --wait >/dev/null
  ferry --dir "$A" group add "$group" "${uris[@]}" --wait >/dev/null
  local t_start t_first
  t_start=$(timed "$A" group start "$group")
  t_first=$(timed "$A" rp create "$group" --name older)
  T_FULL=$(echo "$t_start + $t_first" | bc -l)
  for ((i = 0; i < count; i++)); do fill site-a "$TAG-$group-$i" 4 "$((100 + i))"; done
  ferry --dir "$A" rp create "$group" --name latest --wait >/dev/null
}

# peak_rss_mib PID: the process's peak resident set (VmHWM) so far, MiB.
peak_rss_mib() {
  awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"
}

# cpu_secs PID: the process's user + system CPU seconds so far.
cpu_secs() {
  awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"
}

# timed DIR ARGS…: wall seconds of the failover command.
timed() {
  local dir=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  ferry --dir "$dir" "$@" --wait >/dev/null || { echo "failed: ferry --dir $dir $*" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

run_case() {
  local name=$1 count=$2 size=$3 run=$4 extra=()
  ((COPY)) && extra=(--copy)
  start_pair "$name$run"
  local rfill
  rfill=$(reprotect_fill "$size")
  protect "${name}l" "$count" "$size" "$rfill"
  local t_full=$T_FULL
  printf '%s\tprimary peak RSS after the full sync (MiB)\t%s\n' "$name" "$(peak_rss_mib "$A_PID")" >>"$RES"
  printf '%s\tstandby peak RSS after the full sync (MiB)\t%s\n' "$name" "$(peak_rss_mib "$B_PID")" >>"$RES"
  printf '%s\tprimary CPU-s after the full sync\t%s\n' "$name" "$(cpu_secs "$A_PID")" >>"$RES"
  printf '%s\tstandby CPU-s after the full sync\t%s\n' "$name" "$(cpu_secs "$B_PID")" >>"$RES"
  if ((FULL_ONLY)); then
    printf '%s\tfull sync (%s MiB each)\t%s\n' "$name" "$rfill" "$t_full" >>"$RES"
    echo "run $run $name: full sync ${t_full}s" >&2
    kill -9 "$A_PID" "$B_PID" 2>/dev/null || true
    wait "$A_PID" "$B_PID" 2>/dev/null || true
    purge_images
    return 0
  fi
  protect "${name}o" "$count" "$size" "$FILL_MIB"
  local t_drill t_drill_end
  t_drill=$(timed "$B" group drill "${name}l")
  t_drill_end=$(timed "$B" group drill "${name}l" --end)
  kill -9 "$A_PID"
  local t_latest t_older
  t_latest=$(timed "$B" group failover "${name}l" "${extra[@]}")
  t_older=$(timed "$B" group failover "${name}o" --rp older "${extra[@]}")
  printf '%s\tlatest%s\t%s\n' "$name" "${extra[*]:+ --copy}" "$t_latest" >>"$RES"
  printf '%s\tolder%s\t%s\n' "$name" "${extra[*]:+ --copy}" "$t_older" >>"$RES"
  printf '%s\tdrill start\t%s\n' "$name" "$t_drill" >>"$RES"
  printf '%s\tdrill end\t%s\n' "$name" "$t_drill_end" >>"$RES"
  echo "run $run $name: latest ${t_latest}s, older ${t_older}s, drill ${t_drill}s / end ${t_drill_end}s" >&2
  if ((!COPY)); then
    # Split brain: 64 MiB on each side, 1 MiB pieces round-robin over the volumes.
    local targets=() i
    mapfile -t targets < <(ferry --dir "$B" --json group show "${name}l" | jq -r '.resources[].standby_target')
    for ((i = 0; i < count; i++)); do
      local mib=$(((64 + count - 1 - i) / count))
      ((mib > 0)) || continue
      fill site-b "${targets[$i]}" "$mib" "$((300 + i))"
      fill site-a "$TAG-${name}l-$i" "$mib" "$((400 + i))"
    done
    ferry-agent run --dir "$A" --listen "$A_LISTEN" --api-listen 127.0.0.1:0 >>"$A.log" 2>&1 & PIDS+=($!); A_PID=$!
    until ferry --dir "$A" status >/dev/null 2>&1; do sleep 0.2; done
    local t_reprotect
    t_reprotect=$(timed "$B" group reprotect "${name}l")
    printf '%s\treprotect (64 MiB per side)\t%s\n' "$name" "$t_reprotect" >>"$RES"
    printf '%s\tfull sync of the same volumes (%s MiB each)\t%s\n' "$name" "$rfill" "$t_full" >>"$RES"
    echo "run $run $name: reprotect ${t_reprotect}s, full sync ${t_full}s" >&2
  fi
  # The agents go and their images with them (stopping the re-protected group would have the
  # standby remove 20 images inside one peer request).
  kill -9 "$A_PID" "$B_PID" 2>/dev/null || true
  wait "$A_PID" "$B_PID" 2>/dev/null || true
  purge_images
}

for ((run = 1; run <= RUNS; run++)); do
  for c in $CASES; do
    case "$c" in
      group20) run_case group20 20 1024 "$run" ;;
      single16) run_case single16 1 16384 "$run" ;;
      *) echo "unknown case $c (group20, single16)" >&2; exit 2 ;;
    esac
  done
done

report() {
  echo "| case | what | median (s, or MiB) of $RUNS | runs |"
  echo "|---|---|---|---|"
  cut -f1,2 "$RES" | sort -u | while IFS=$'\t' read -r c k; do
    local vals
    vals=$(awk -F'\t' -v c="$c" -v k="$k" '$1==c && $2==k {print $3}' "$RES" | sort -g)
    local median
    median=$(echo "$vals" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
    printf '| %s | %s | %.2f | %s |\n' "$c" "$k" "$median" "$(echo "$vals" | tr '\n' ' ')"
  done
}
report
[[ -n "$WRITE_MD" ]] && report >"$WRITE_MD"
exit 0
