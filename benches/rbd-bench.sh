#!/usr/bin/env bash
# rbd-bench.sh — ferry site-a → site-b on the two-site Ceph lab against its peers, in ONE run:
# ferry (full, then incremental, for each coalesce_gap), `rbd export-diff | rbd import-diff`
# (with and without zstd -1), rbd-mirror snapshot and journal mode, and the lab's ceilings
# (export-diff to /dev/null, rbd import, rbd bench 4 MiB seq / 4 KiB random). Prints a table of
# peer/ferry ratios (wall and CPU), CPU-seconds per GB for everyone, wire bytes per changed byte
# per coalesce_gap, and PASS/MISS for issue 3's targets. See benches/BENCHMARKING.md.
#
#   benches/rbd-bench.sh [--runs N] [--no-mirror] [--gaps "default 0 16K 64K"] [--write-md FILE]
#   benches/rbd-bench.sh --rpo [OPTIONS]   the RPO-lag and no-change-cycle job: benches/rpo-bench.sh
#   benches/rbd-bench.sh --wan [OPTIONS]   the 20 ms / 1 Gbit/s link job: benches/wan-bench.sh
#
# Environment: FERRY_BENCH_SIZE (image, default 2G), FERRY_BENCH_CHANGE (change set of scattered
# 4 KiB writes, default 128M), FERRY_BENCH_RUNS (default 3), FERRY_BENCH_GAPS, FERRY_BENCH_PORT
# (standby agent's UDP port, default 47491), FERRY_BIN_DIR (release binaries, default
# $CARGO_TARGET_DIR/release or target/release), FERRY_BENCH_SEED, FERRY_CEPH_LAB_DIR,
# FERRY_BENCH_KEEP=1 (keep the bench-* images and agent dirs after the run).
# Run as root. Brings the lab up itself (scripts/ceph-lab.sh up). Every ferry copy is checked with
# `ferry verify` (exit 0) and, in run 1, by md5 of `rbd export` of source and standby recovery
# point. Creates and removes only images named bench-* (both sites); never purges the lab.
# The measured commands are single-quoted on purpose: a child bash expands them (exported vars).
# shellcheck disable=SC2016
set -euo pipefail

case "${1:-}" in
  --rpo) shift; exec "$(dirname "${BASH_SOURCE[0]}")/rpo-bench.sh" "$@" ;;
  --wan) shift; exec "$(dirname "${BASH_SOURCE[0]}")/wan-bench.sh" "$@" ;;
esac
# shellcheck source=benches/lib-ceph.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-ceph.sh"
REPO="$CEPH_LIB_REPO"
RUNS="${FERRY_BENCH_RUNS:-3}"
MIRROR=1
GAPS="${FERRY_BENCH_GAPS:-default 0 16K 64K}"
WRITE_MD=""
while (($#)); do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --no-mirror) MIRROR=0; shift ;;
    --gaps) GAPS="$2"; shift 2 ;;
    --write-md) WRITE_MD="$2"; shift 2 ;;
    *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
IMG_SIZE=$(to_bytes "${FERRY_BENCH_SIZE:-2G}")
CHANGE=$(to_bytes "${FERRY_BENCH_CHANGE:-128M}")
DELTA_COUNT=$((CHANGE / 4096))
PORT="${FERRY_BENCH_PORT:-47491}"
BIN="${FERRY_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}"
FERRY="$BIN/ferry"
FAGENT="$BIN/ferry-agent"
((IMG_SIZE % (4 << 20) == 0)) || die "FERRY_BENCH_SIZE must be a multiple of 4 MiB"
((DELTA_COUNT > 0)) || die "FERRY_BENCH_CHANGE must be at least 4K"
[[ -x $FERRY && -x $FAGENT ]] ||
  die "no release binaries in $BIN (cargo build --release --bins -j 2, or set FERRY_BIN_DIR)"

[[ $(id -u) -eq 0 ]] || die "run as root"
"$LAB" up
ceph_lib_init "$LAB_DIR/rbd-bench"
FA="$WORK/ferry-a" # primary agent dir (config: cluster site-a, coalesce_gap)
FB="$WORK/ferry-b" # standby agent dir (RBD backend in site-b pool rbd)
WIRE="$WORK/wire.tsv"
JSON_DIR="$WORK/json"
AGENT_PID=""
export FERRY FA PORT

stop_agent() {
  if [[ -n $AGENT_PID ]]; then
    kill "$AGENT_PID" 2>/dev/null || true
    wait "$AGENT_PID" 2>/dev/null || true
    AGENT_PID=""
  fi
}
on_exit() {
  local rc=$?
  stop_agent
  if [[ ${FERRY_BENCH_KEEP:-0} != 1 ]]; then
    cleanup_images bench- || log "cleanup of bench-* images failed"
  fi
  exit "$rc"
}
trap on_exit EXIT

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RSS_IDLE=$(h rss VmRSS)
log "ceph $(ceph --version | awk '{print $3}'), $(nproc) cores, runs=$RUNS, seed=$SEED," \
  "image $((IMG_SIZE >> 20)) MiB, change $DELTA_COUNT x 4 KiB, gaps: $GAPS, binaries $BIN"
cleanup_images bench-

# 1. Test data and the shared source for the rbd peers -----------------------------------------
make_data
prepare_source bench-base
OBJECT_SIZE=$(ra info rbd/bench-base --format json | jq .object_size)

# 2. ferry agents -------------------------------------------------------------------------------
rm -rf "$FA" "$FB" "$JSON_DIR"
mkdir -p "$JSON_DIR"
: >"$WIRE"
FP_A=$("$FAGENT" init --dir "$FA" | tail -n 1)
FP_B=$("$FAGENT" init --dir "$FB" | tail -n 1)
export FP_B
printf '[standby]\nbackend = "rbd"\nrbd_pool = "rbd"\n[ceph]\ncluster = "%s"\n' "$B" >"$FB/config.toml"
"$FAGENT" run --dir "$FB" --listen "127.0.0.1:$PORT" --trust "$FP_A" >"$WORK/agent-b.log" 2>&1 &
AGENT_PID=$!
for ((i = 0; i < 300; i++)); do
  grep -qs 'ferry-agent ready' "$WORK/agent-b.log" && break
  kill -0 "$AGENT_PID" 2>/dev/null || { tail -n 20 "$WORK/agent-b.log" >&2; die "standby agent exited"; }
  sleep 0.1
done
grep -q 'ferry-agent ready' "$WORK/agent-b.log" || die "standby agent not ready after 30 s"
log "standby agent pid $AGENT_PID on 127.0.0.1:$PORT (fingerprint $FP_B)"

# primary_config GAP: A's config — cluster site-a, and coalesce_gap unless GAP is "default".
primary_config() {
  {
    printf '[ceph]\ncluster = "%s"\n' "$A"
    if [[ $1 != default ]]; then printf 'coalesce_gap = "%s"\n' "$(to_bytes "$1")"; fi
  } >"$FA/config.toml"
}

# ferry_check IMG JSON RUN: `ferry verify` must exit 0; in run 1 also the md5 of the source
# (unchanged since the sync) and of the standby's recovery-point snapshot must match.
ferry_check() {
  local img="$1" json="$2" r="$3" out rp sa sb
  if ! out=$("$FERRY" verify --dir "$FA" "rbd:rbd/$img" "quic://127.0.0.1:$PORT/$img" --peer "$FP_B" 2>&1); then
    log "ferry verify output: $out"
    tail -n 30 "$WORK/agent-b.log" >&2
    die "ferry verify failed for $img: the standby is not equal to the source"
  fi
  if ((r == 1)); then
    rp=$(jq -r .recovery_point "$json")
    sa=$(md5_of "$A" "$img")
    sb=$(md5_of "$B" "$img@ferry-rp-$rp")
    [[ $sa == "$sb" ]] || die "ferry standby $img@ferry-rp-$rp differs from the source: md5 $sa vs $sb"
    log "verified: $img: ferry verify equal, md5 source == standby@ferry-rp-$rp ($sa)"
  else
    log "verified: $img: ferry verify equal"
  fi
}

# ferry_run RUN GAP: fresh import of $DATA, full sync, change set, incremental sync; both checked.
ferry_run() {
  local r="$1" gap="$2" tag
  tag=$(tr '[:upper:]' '[:lower:]' <<<"$gap")
  export FIMG="bench-f$tag-r$r"
  primary_config "$gap"
  rm_img "$A" "$FIMG"
  rm_img "$B" "$FIMG"
  ra import --no-progress "$DATA" "rbd/$FIMG"
  export FJSON="$JSON_DIR/full-$tag-$r.json"
  BENCH_EXTRA_PIDS="$AGENT_PID" m "ferry: full sync (coalesce_gap $gap)" "$r" \
    '$FERRY sync --dir $FA rbd:rbd/$FIMG quic://127.0.0.1:$PORT/$FIMG --peer $FP_B --json >$FJSON'
  printf '%s\t%s\tfull\t%s\n' "$gap" "$r" "$FJSON" >>"$WIRE"
  ferry_check "$FIMG" "$FJSON" "$r"
  h delta "$A" "$FIMG" "$SEED" "$DELTA_COUNT" >/dev/null
  export FJSON="$JSON_DIR/incr-$tag-$r.json"
  BENCH_EXTRA_PIDS="$AGENT_PID" m "ferry: incr sync (coalesce_gap $gap)" "$r" \
    '$FERRY sync --dir $FA rbd:rbd/$FIMG quic://127.0.0.1:$PORT/$FIMG --peer $FP_B --json >$FJSON'
  printf '%s\t%s\tincr\t%s\n' "$gap" "$r" "$FJSON" >>"$WIRE"
  log "ferry incr (gap $gap): $(jq -c '{bytes_changed, bytes_sent, udp_bytes, seconds}' "$FJSON")"
  ferry_check "$FIMG" "$FJSON" "$r"
  if [[ $gap == "${GAPS%% *}" ]]; then
    # Nothing changed since the last sync: the fixed cost of a cycle (process start, librbd
    # connect, snapshot, diff, connection, commit), which dominates small test sizes.
    export FJSON="$JSON_DIR/empty-$tag-$r.json"
    BENCH_EXTRA_PIDS="$AGENT_PID" m "ferry: no-change sync (coalesce_gap $gap)" "$r" \
      '$FERRY sync --dir $FA rbd:rbd/$FIMG quic://127.0.0.1:$PORT/$FIMG --peer $FP_B --json >$FJSON'
  fi
  rm_img "$A" "$FIMG"
  rm_img "$B" "$FIMG"
}

# 3. Measurements -------------------------------------------------------------------------------
for ((r = 1; r <= RUNS; r++)); do
  for gap in $GAPS; do
    log "run $r/$RUNS: ferry, coalesce_gap $gap"
    ferry_run "$r" "$gap"
  done
  log "run $r/$RUNS: export-diff | import-diff"
  run_exportdiff "$r" bench-base bench-dst bench-dstz
  log "run $r/$RUNS: ceilings"
  run_ceilings "$r" bench-base bench-imp
done
BENCH_TXT="$WORK/rbd-bench.txt"
run_rbd_bench "$RUNS" bench-rbdbench "$BENCH_TXT"
if ((MIRROR)); then
  run_mirror_snapshot "$RUNS" bench-ms
  run_mirror_journal "$RUNS" bench-mj
fi
stop_agent
RSS_NOW=$(h rss VmRSS)

# 4. Report -------------------------------------------------------------------------------------
jq -n --argjson image_size "$IMG_SIZE" --argjson nonzero "$NONZERO" \
  --argjson change_count "$DELTA_COUNT" --argjson change_bytes "$DELTA_UNIQUE" \
  --argjson extents "$EXTENTS" --argjson diff_bytes "$DIFF_BYTES" \
  --arg extents_json "$WORK/delta-extents.json" --argjson object_size "$OBJECT_SIZE" \
  --arg gaps "$GAPS" --argjson runs "$RUNS" \
  '{image_size: $image_size, nonzero: $nonzero, change_count: $change_count,
    change_bytes: $change_bytes, extents: $extents, diff_bytes: $diff_bytes,
    extents_json: $extents_json, object_size: $object_size,
    gaps: ($gaps | split(" ") | map(select(. != ""))), runs: $runs}' >"$WORK/meta.json"
REV=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$REPO" diff --quiet HEAD 2>/dev/null || REV="$REV+uncommitted"
REPORT="$WORK/report.md"
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ), ferry $REV ($BIN), ceph $(ceph --version | awk '{print $3}')," \
    "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)," \
    "runs=$RUNS, seed=$SEED; load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  echo "Image composition $(cat "$DATA.composition.json") by bytes; change set written by python3-rbd" \
    "aio (32 in flight) in ${DELTA_WRITE_S} s."
  echo
  h rbdreport "$RES" "$WIRE" "$BENCH_TXT" "$WORK/meta.json"
  echo
  echo "All jobs (median of $RUNS):"
  echo
  h summarize "$RES"
  echo
  echo "rbd bench on site-a (16 threads, $((IMG_SIZE >> 20)) MiB image):"
  echo
  h benchsum "$BENCH_TXT"
  if [[ -n $MIRROR_NOTES ]]; then
    echo
    echo '```'
    printf '%s' "$MIRROR_NOTES"
    echo '```'
  fi
  echo
  echo "RSS of all lab daemons: ${RSS_IDLE} MiB before, ${RSS_NOW} MiB after."
} >"$REPORT"
cat "$REPORT"
if [[ -n $WRITE_MD ]]; then
  h write-md "$WRITE_MD" "$REPORT" benches/rbd-bench.sh
  log "wrote results into $WRITE_MD"
fi
