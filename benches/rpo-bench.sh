#!/usr/bin/env bash
# rpo-bench.sh — RPO lag of ferry's continuous group replication on the two-site Ceph lab under a
# steady, rate-paced writer, beside rbd-mirror (journal mode measured in the same run; snapshot
# mode's schedule floor stated), and the cost of a cycle that finds nothing changed (the daemon's
# idle check, and a whole `ferry sync` process). See benches/BENCHMARKING.md.
#
#   benches/rpo-bench.sh [--seconds S] [--rates "5 10"] [--images "1 3"] [--idle S]
#                        [--sync-runs N] [--no-journal] [--no-ferry]
#   (also: benches/rbd-bench.sh --rpo [same options])
#
# Per image count N (one image, a 3-image group): N fresh 1 GiB images rpo-gN-* on site-a, one
# protection group rpo-gN of a primary ferry-agent (site-a) paired with a standby agent (RBD
# backend, site-b pool rbd), set up with the CLI as an operator does (service key/create, group
# create/add/start). Per rate (MB/s, 10^6, in total over the group's images): a python3-rbd
# writer of 4 KiB random aio writes paced by a token bucket (benches/rpo_bench.py write) runs
# WARM + S seconds; after WARM s, `ferry status --json` is sampled every 0.5 s for S seconds
# (rpo_lag_secs of the group), and so is the marker age of the standby's newest ferry-rp-*
# snapshot (the writer stamps the wall clock into each image's last block every 100 ms): two
# measurements of one lag. Then, nothing written, the idle checks are sampled for --idle s.
# rbd-mirror journal mode (scripts/ceph-lab.sh mirror-up journal; down again at once) gets the
# same images, writer and sampling: the marker age of the standby image's head, and
# entries_behind_primary of its mirror status.
#
# Environment: FERRY_RPO_SECONDS (S, default 60), FERRY_RPO_RATES, FERRY_RPO_IMAGES,
# FERRY_RPO_IDLE (default 20), FERRY_RPO_SIZE (per image, default 1G), FERRY_RPO_PORT (standby
# UDP port, default 47493; the primary takes the next), FERRY_BIN_DIR, FERRY_BENCH_SEED,
# FERRY_CEPH_LAB_DIR, FERRY_BENCH_KEEP=1 (keep images and agent dirs). Run as root; only images
# named rpo-* are created and removed (both sites).
set -euo pipefail

# shellcheck source=benches/lib-ceph.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-ceph.sh"
REPO="$CEPH_LIB_REPO"
SECONDS_RUN="${FERRY_RPO_SECONDS:-60}"
RATES="${FERRY_RPO_RATES:-5 10}"
COUNTS="${FERRY_RPO_IMAGES:-1 3}"
IDLE="${FERRY_RPO_IDLE:-20}"
SYNC_RUNS=5
JOURNAL=1
FERRY_JOBS=1
WARM=5
INTERVAL=0.5
while (($#)); do
  case "$1" in
    --seconds) SECONDS_RUN="$2"; shift 2 ;;
    --rates) RATES="$2"; shift 2 ;;
    --images) COUNTS="$2"; shift 2 ;;
    --idle) IDLE="$2"; shift 2 ;;
    --sync-runs) SYNC_RUNS="$2"; shift 2 ;;
    --no-journal) JOURNAL=0; shift ;;
    --no-ferry) FERRY_JOBS=0; shift ;; # the group jobs; --sync-runs 0 skips the ferry sync runs
    *) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
IMG_SIZE=$(to_bytes "${FERRY_RPO_SIZE:-1G}")
PORT="${FERRY_RPO_PORT:-47493}"
BIN="${FERRY_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}"
FERRY="$BIN/ferry"
FAGENT="$BIN/ferry-agent"
RPO_PY="$REPO/benches/rpo_bench.py"
[[ -x $FERRY && -x $FAGENT ]] ||
  die "no release binaries in $BIN (cargo build --release --bins -j 2, or set FERRY_BIN_DIR)"
[[ $(id -u) -eq 0 ]] || die "run as root"
"$LAB" status >/dev/null || die "lab not healthy; run: scripts/ceph-lab.sh up"
ceph_lib_init "$LAB_DIR/rpo-bench"
rp() { "$PY" "$RPO_PY" "$@"; }
FA="$WORK/ferry-a"  # primary agent (protection groups)
FB="$WORK/ferry-b"  # standby agent (RBD backend, site-b)
FS="$WORK/ferry-s"  # identity of the plain `ferry sync` runs
PIDS=()             # agents, writers, samplers
MIRROR_UP=0
REPORT="$WORK/report.txt"

# ungroup CLUSTER IMG: take IMG out of the RBD group it is in, dropping that group's snapshots and
# the group once empty. `ferry group delete` should have done it; on this lab it left a 3-image
# group's RBD group and two group snapshots behind (see the report of the run), so that
# rm_img could not remove the images.
ungroup() {
  local c="$1" img="$2" grp s
  grp=$(rbd --cluster "$c" info "rbd/$img" --format json 2>/dev/null </dev/null | jq -r '.group // empty')
  [[ -n $grp ]] || return 0
  log "$c: $img is still in RBD group $grp; removing it (and the group's snapshots)"
  for s in $(rbd --cluster "$c" group snap list "$grp" --format json </dev/null | jq -r '.[].snapshot'); do
    rbd --cluster "$c" group snap rm "$grp@$s" </dev/null || true
  done
  rbd --cluster "$c" group image remove "$grp" "rbd/$img" </dev/null || true
  if [[ -z $(rbd --cluster "$c" group image list "$grp" </dev/null) ]]; then
    rbd --cluster "$c" group rm "$grp" </dev/null || true
  fi
}

on_exit() {
  local rc=$? p img
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if ((MIRROR_UP)); then "$LAB" mirror-down >/dev/null 2>&1 || log "mirror-down failed"; fi
  if [[ ${FERRY_BENCH_KEEP:-0} != 1 ]]; then
    for img in $(rbd --cluster "$A" ls rbd </dev/null | grep '^rpo-'); do ungroup "$A" "$img"; done
    cleanup_images rpo- || log "cleanup of rpo-* images failed"
  fi
  exit "$rc"
}
trap on_exit EXIT

# start_agent DIR LISTEN [ARGS...]: run ferry-agent in the background until it logs ready.
start_agent() {
  local dir="$1" listen="$2" i pid
  shift 2
  "$FAGENT" run --dir "$dir" --listen "$listen" --api-listen 127.0.0.1:0 "$@" >"$dir/agent.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for ((i = 0; i < 300; i++)); do
    grep -qs 'ferry-agent ready' "$dir/agent.log" && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/agent.log" >&2; die "agent in $dir exited"; }
    sleep 0.1
  done
  die "agent in $dir not ready after 30 s"
}

# progress GROUP FIELD: a field of the group's live progress on the primary.
progress() {
  "$FERRY" --dir "$FA" status --json | jq -r --arg g "$1" --arg f "$2" \
    '.groups[] | select(.name == $g) | .progress[$f] // empty'
}

# wait_idle GROUP: until an idle check completes after now (the group caught up, nothing left).
wait_idle() {
  local g="$1" before i
  before=$(progress "$g" idle_checks)
  for ((i = 0; i < 1200; i++)); do
    (($(progress "$g" idle_checks) > before + 1)) && return 0
    sleep 0.5
  done
  die "group $g did not catch up within 10 minutes"
}

# stats_cols FILE FIELD...: " p50 | p99 | max |" per field, joined (a note when samples lacked one).
stats_cols() {
  local file="$1" out="" p50 p99 mx n miss lower
  shift
  while read -r _ p50 p99 mx n miss lower; do
    out+=" $p50 | $p99 | $mx |"
    ((miss == 0)) || out+=" ($miss of $((n + miss)) samples without a value)"
    ((lower == 0)) || out+=" ($lower of $((n + miss)) samples: no marker on the standby yet, age ≥ the writer's first)"
  done < <(rp stats "$file" "$@")
  printf '%s' "$out"
}

mbps() { jq -r '.achieved_bytes_per_s / 1e6 * 100 | round / 100' "$1"; }

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "ceph $(ceph --version | awk '{print $3}'), $(nproc) cores, ${SECONDS_RUN}s per rate, rates $RATES MB/s," \
  "images $COUNTS, $((IMG_SIZE >> 20)) MiB each, binaries $BIN"
cleanup_images rpo-
rm -rf "$FA" "$FB" "$FS"
FP_A=$("$FAGENT" init --dir "$FA" | tail -n 1)
FP_B=$("$FAGENT" init --dir "$FB" | tail -n 1)
FP_S=$("$FAGENT" init --dir "$FS" | tail -n 1)
printf '[ceph]\ncluster = "%s"\n' "$A" >"$FA/config.toml"
printf '[ceph]\ncluster = "%s"\n' "$A" >"$FS/config.toml"
printf '[standby]\nbackend = "rbd"\nrbd_pool = "rbd"\n[ceph]\ncluster = "%s"\n' "$B" >"$FB/config.toml"
# The standby trusts the plain `ferry sync` identity; the primary agent pairs through a service.
start_agent "$FB" "127.0.0.1:$PORT" --trust "$FP_S"
start_agent "$FA" "127.0.0.1:$((PORT + 1))"
KEY=$("$FERRY" --dir "$FB" service key)
"$FERRY" --dir "$FA" service create --key "$KEY" --name rpo-bench >/dev/null
"$FERRY" --dir "$FA" service verify rpo-bench >/dev/null
log "agents: primary $FP_A, standby $FP_B on 127.0.0.1:$PORT, paired"

{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ), ferry $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?') ($BIN)," \
    "ceph $(ceph --version | awk '{print $3}'), $(nproc) cores; load average at start $LOAD_START."
  echo "Writer: 4 KiB random aio writes (python3-rbd, token bucket, 10 ms ticks, ≤ 64 in flight)," \
    "rate = MB/s (10^6) over all images of the group; sampled every ${INTERVAL} s for ${SECONDS_RUN} s" \
    "after ${WARM} s of writing. Lag columns: p50 | p99 | max, seconds."
  echo
} >"$REPORT"
FERRY_ROWS=""
IDLE_ROWS=""

# 1. ferry: one protection group per image count ------------------------------------------------
((FERRY_JOBS)) || COUNTS_F=""
for n in ${COUNTS_F-$COUNTS}; do
  g="rpo-g$n"
  imgs=()
  for ((k = 0; k < n; k++)); do
    imgs+=("$g-$k")
    ra create "rbd/$g-$k" --size "$((IMG_SIZE >> 20))M"
  done
  "$FERRY" --dir "$FA" group create "$g" --wait >/dev/null
  specs=()
  for i in "${imgs[@]}"; do specs+=("rbd:rbd/$i"); done
  "$FERRY" --dir "$FA" group add "$g" "${specs[@]}" --wait >/dev/null
  mapfile -t standby < <("$FERRY" --dir "$FB" group show "$g" --json | jq -r '.resources[].standby_target')
  "$FERRY" --dir "$FA" group start "$g" --wait >/dev/null
  log "group $g: ${imgs[*]} -> site-b ${standby[*]}; waiting for the first recovery point"
  for ((i = 0; i < 600; i++)); do
    (($(progress "$g" cycles) >= 1)) && break
    sleep 0.5
  done
  wait_idle "$g"
  for rate in $RATES; do
    tag="ferry-n$n-r$rate"
    log "ferry, $n image(s), $rate MB/s: writing $((WARM + SECONDS_RUN)) s, sampling ${SECONDS_RUN} s"
    rm -f "$WORK/$tag.writer.json.start"
    rp write "$A" "$((rate * 1000000))" "$((WARM + SECONDS_RUN))" "$SEED" "$WORK/$tag.writer.json" "${imgs[@]}" &
    wpid=$!
    PIDS+=("$wpid")
    sleep "$WARM"
    RPO_WRITER_START="$WORK/$tag.writer.json.start" \
      rp sample-ferry "$FERRY" "$FA" "$g" "$SECONDS_RUN" "$INTERVAL" "$WORK/$tag.samples" "$B" "${standby[@]}"
    wait "$wpid"
    cols=$(stats_cols "$WORK/$tag.samples" rpo_lag_secs marker_age)
    read -r _ _ cyc _ < <(rp idle "$WORK/$tag.samples")
    FERRY_ROWS+="| ferry group, $n image(s) | $rate | $(mbps "$WORK/$tag.writer.json") |$cols $cyc |"$'\n'
    log "ferry, $n image(s), $rate MB/s: p50 | p99 | max (rpo_lag_secs, marker age):$cols"
    wait_idle "$g"
  done
  # The daemon's no-change cycle: nothing written for IDLE s.
  log "ferry, $n image(s): idle for ${IDLE}s"
  rp sample-ferry "$FERRY" "$FA" "$g" "$IDLE" "$INTERVAL" "$WORK/idle-n$n.samples"
  read -r checks window cycles p50 p99 mx < <(rp idle "$WORK/idle-n$n.samples")
  lag=$(stats_cols "$WORK/idle-n$n.samples" rpo_lag_secs)
  IDLE_ROWS+="| daemon idle check, $n image(s) | $checks in ${window} s ($cycles committed) | $p50 | $p99 | $mx |$lag"$'\n'
  "$FERRY" --dir "$FA" group stop "$g" --wait >/dev/null
  "$FERRY" --dir "$FA" group delete "$g" --wait >/dev/null
  for i in "${imgs[@]}"; do
    ungroup "$A" "$i"
    rm_img "$A" "$i"
  done
  for i in "${standby[@]}"; do rm_img "$B" "$i"; done
done

# 2. `ferry sync` of an unchanged image: process start, librbd connect, handshake, idle check ---
SYNC_IMG=rpo-sync
SYNC_WALLS=()
if ((SYNC_RUNS > 0)); then
  ra create "rbd/$SYNC_IMG" --size "$((IMG_SIZE >> 20))M"
  "$PY" -c 'import sys, rados, rbd
r = rados.Rados(conffile="/etc/ceph/site-a.conf", clustername="site-a"); r.connect()
io = r.open_ioctx("rbd")
with rbd.Image(io, sys.argv[1]) as im: im.write(b"x" * 65536, 0)' "$SYNC_IMG"
  "$FERRY" sync --dir "$FS" "rbd:rbd/$SYNC_IMG" "quic://127.0.0.1:$PORT/$SYNC_IMG" --peer "$FP_B" --json >"$WORK/sync-full.json"
  for ((r = 1; r <= SYNC_RUNS; r++)); do
    t0=$(date +%s.%N)
    "$FERRY" sync --dir "$FS" "rbd:rbd/$SYNC_IMG" "quic://127.0.0.1:$PORT/$SYNC_IMG" --peer "$FP_B" --json >"$WORK/sync-nochange-$r.json"
    t1=$(date +%s.%N)
    SYNC_WALLS+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')")
    log "ferry sync, nothing changed, run $r: $(jq -c '{seconds, bytes_changed, recovery_point}' "$WORK/sync-nochange-$r.json") wall ${SYNC_WALLS[-1]} s"
  done
  SYNC_MED=$(printf '%s\n' "${SYNC_WALLS[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  SYNC_REP_MED=$(for ((r = 1; r <= SYNC_RUNS; r++)); do jq .seconds "$WORK/sync-nochange-$r.json"; done |
    sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  rm_img "$A" "$SYNC_IMG"
  rm_img "$B" "$SYNC_IMG"
fi

# 3. rbd-mirror journal mode: same images, writer and sampling ----------------------------------
JOURNAL_ROWS=""
if ((JOURNAL)); then
  "$LAB" mirror-down >/dev/null 2>&1 || true
  MIRROR_UP=1
  "$LAB" mirror-up journal
  for n in $COUNTS; do
    imgs=()
    for ((k = 0; k < n; k++)); do
      imgs+=("rpo-j$n-$k")
      ra create "rbd/rpo-j$n-$k" --size "$((IMG_SIZE >> 20))M" \
        --image-feature layering,exclusive-lock,object-map,fast-diff,journaling
    done
    log "journal mode, $n image(s): waiting for rbd-mirror to replay ${imgs[*]}"
    for i in "${imgs[@]}"; do
      for ((k = 0; k < 240; k++)); do
        rb mirror image status "rbd/$i" 2>/dev/null | grep -q 'state: *up+replaying' && break
        sleep 0.5
      done
      rb mirror image status "rbd/$i" | grep -q 'state: *up+replaying' || die "rbd-mirror does not replay $i"
    done
    for rate in $RATES; do
      tag="journal-n$n-r$rate"
      log "journal mode, $n image(s), $rate MB/s: writing $((WARM + SECONDS_RUN)) s, sampling ${SECONDS_RUN} s"
      rm -f "$WORK/$tag.writer.json.start"
    rp write "$A" "$((rate * 1000000))" "$((WARM + SECONDS_RUN))" "$SEED" "$WORK/$tag.writer.json" "${imgs[@]}" &
      wpid=$!
      PIDS+=("$wpid")
      sleep "$WARM"
      RPO_WRITER_START="$WORK/$tag.writer.json.start" \
        rp sample-journal "$B" "$SECONDS_RUN" "$INTERVAL" "$WORK/$tag.samples" "${imgs[@]}"
      wait "$wpid"
      cols=$(stats_cols "$WORK/$tag.samples" marker_age entries_behind_primary)
      JOURNAL_ROWS+="| rbd-mirror journal, $n image(s) | $rate | $(mbps "$WORK/$tag.writer.json") |$cols"$'\n'
      log "journal mode, $n image(s), $rate MB/s: p50 | p99 | max (marker age, entries behind):$cols"
      sleep 5 # let the replay drain before the next rate
    done
    for i in "${imgs[@]}"; do
      ra feature disable "rbd/$i" journaling || true
      rm_img "$A" "$i"
    done
  done
  "$LAB" mirror-down
  MIRROR_UP=0
fi

# 4. Report -------------------------------------------------------------------------------------
{
  if ((FERRY_JOBS)); then
    echo "RPO lag under a steady writer (ferry: rpo_lag_secs from \`ferry status --json\` = age of the"
    echo "start of the last completed cycle; marker age = age of the newest writer timestamp in the"
    echo "standby's newest recovery point, oldest image of the group):"
    echo
    echo "| replication | MB/s asked | MB/s written | rpo_lag_secs p50 | p99 | max | marker age p50 | p99 | max | cycles in window |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    printf '%s' "$FERRY_ROWS"
    echo
  fi
  if ((JOURNAL)); then
    echo "rbd-mirror journal mode, same writer (marker age of the standby image's head; entries_behind_primary"
    echo "as rbd-mirror last reported it in its mirror image status, which it refreshes only now and then;"
    echo "largest of the group's images):"
    echo
    echo "| replication | MB/s asked | MB/s written | marker age p50 | p99 | max | entries behind p50 | p99 | max |"
    echo "|---|---|---|---|---|---|---|---|---|"
    printf '%s' "$JOURNAL_ROWS"
    echo
  fi
  echo "rbd-mirror snapshot mode: not run. Its RPO is bounded below by its schedule: \`rbd mirror snapshot"
  echo "schedule add\` takes whole minutes (rbd_support's Interval parses ^(\\d+)(d|h|m)?\$ into minutes), so"
  echo "the shortest interval is 1m and the lag saw-tooths from the last snapshot's transfer time up to"
  echo "≥ 60 s + transfer time."
  if ((FERRY_JOBS)); then
    echo
    echo "No-change cycle:"
    echo
    echo "| what | idle checks | last_cycle_seconds p50 | p99 | max | rpo_lag_secs p50 | p99 | max |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s' "$IDLE_ROWS"
  fi
  if ((SYNC_RUNS > 0)); then
    echo
    echo "\`ferry sync\` of an unchanged $((IMG_SIZE >> 20)) MiB image ($SYNC_RUNS runs; process start, librbd" \
      "connect, handshake, snapshot and diff): median wall $SYNC_MED s, median report seconds" \
      "$SYNC_REP_MED s (runs: ${SYNC_WALLS[*]})."
  fi
  echo
  echo "Load average at end $(cut -d' ' -f1-3 /proc/loadavg)."
} >>"$REPORT"
cat "$REPORT"
