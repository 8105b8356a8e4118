#!/usr/bin/env bash
# ceph-baselines.sh — baseline measurements on the two-site Ceph lab (scripts/ceph-lab.sh up):
# what ferry has to beat (export-diff | import-diff, with and without zstd, rbd-mirror in snapshot
# and journal mode) and the lab's own ceilings (export-diff to /dev/null, rbd import, rbd bench).
#
#   benches/ceph-baselines.sh [--runs N] [--no-mirror] [--write-md FILE]
#
# Shares its jobs with benches/rbd-bench.sh through benches/lib-ceph.sh and benches/ceph_bench.py.
# Every measured job reports wall seconds and CPU-seconds of ALL processes: the client commands
# (getrusage of the waited-for pipeline) plus utime+stime deltas of every lab daemon
# (/proc/<pid>/stat of mon, mgr, osd on both sites and rbd-mirror). Medians of N runs (default 3).
# Test data: a 2 GiB image, 50 % random / 25 % zero / 25 % log-like text in 64 KiB..4 MiB pieces,
# generated from a seed; the incremental change set is 32768 seeded 4 KiB writes at random 4 KiB-
# aligned offsets (128 MiB) through the python3-rbd binding. Needs /usr/bin/python3 with python3-rbd
# (installed here if missing), zstd, jq. Run as root; no TTY needed. Leaves images it made removed.
# The measured commands are single-quoted on purpose: a child bash expands them, and the report
# prints them verbatim.
# shellcheck disable=SC2016
set -euo pipefail

# Shared code (measurement, test data, the peer jobs): benches/lib-ceph.sh, benches/ceph_bench.py.
# shellcheck source=benches/lib-ceph.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-ceph.sh"
RUNS=3
MIRROR=1
WRITE_MD=""
IMG_SIZE="${FERRY_BENCH_IMG_SIZE:-$((2 * 1024 * 1024 * 1024))}" # smaller only for smoke tests
while (($#)); do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --no-mirror) MIRROR=0; shift ;;
    --write-md) WRITE_MD="$2"; shift 2 ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
DELTA_COUNT=32768
ceph_lib_init "$LAB_DIR/bench"

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RSS_IDLE=$(h rss VmRSS)
log "lab daemons RSS before: ${RSS_IDLE} MiB"
log "ceph $(ceph --version | awk '{print $3}'), $(nproc) cores, runs=$RUNS, seed=$SEED"
cleanup_images bl-

# 1. Test data ------------------------------------------------------------------------------
make_data
prepare_source bl-src

# 2. export-diff | import-diff ------------------------------------------------------------
for ((r = 1; r <= RUNS; r++)); do
  log "run $r/$RUNS: export-diff | import-diff"
  run_exportdiff "$r" bl-src bl-dst bl-dstz
  if ((r == 1)); then run_zstd_probe "$r" bl-src; fi
done

# 3. Ceilings ---------------------------------------------------------------------------------
for ((r = 1; r <= RUNS; r++)); do
  log "run $r/$RUNS: ceilings"
  run_ceilings "$r" bl-src bl-imp
done
BENCH_TXT="$WORK/rbd-bench.txt"
run_rbd_bench "$RUNS" bl-bench "$BENCH_TXT"

# 4. rbd-mirror ------------------------------------------------------------------------------
if ((MIRROR)); then
  run_mirror_snapshot "$RUNS" bl-ms
  run_mirror_journal "$RUNS" bl-mj
fi
sleep 2
cleanup_images bl-

RSS_NOW=$(h rss VmRSS)
RSS_PEAK=$(h rss VmHWM)
FULL_RAW=$(cat "$WORK/full.raw")
FULL_ZST=$(cat "$WORK/full.zst")

# 5. Report -----------------------------------------------------------------------------------
REPORT="$WORK/report.md"
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ), ceph $(ceph --version | awk '{print $3}'), $(nproc) cores," \
    "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r), runs=$RUNS, seed=$SEED;" \
    "load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg) (other work shares these 2 cores)."
  echo
  echo "Image: $((IMG_SIZE >> 20)) MiB, composition $(cat "$DATA.composition.json") by bytes;" \
    "rbd diff reports $NONZERO bytes allocated at s1. Incremental: $DELTA_COUNT seeded 4 KiB writes →" \
    "$EXTENTS extents / $DIFF_BYTES bytes in \`rbd diff --from-snap s1\`" \
    "(written by python3-rbd aio, 32 in flight, in ${DELTA_WRITE_S} s)."
  echo "Full export-diff stream: $FULL_RAW bytes; zstd -1: $FULL_ZST bytes" \
    "(ratio $(awk -v a="$FULL_RAW" -v b="$FULL_ZST" 'BEGIN {printf "%.2f", a/b}'))."
  echo
  h summarize "$RES"
  echo
  echo "rbd bench on site-a (16 threads, image bl-bench $((IMG_SIZE >> 20)) MiB; each line one run):"
  echo
  h benchsum "$BENCH_TXT"
  if [[ -n $MIRROR_NOTES ]]; then
    echo
    echo '```'
    printf '%s' "$MIRROR_NOTES"
    echo '```'
  fi
  echo
  echo "RSS of all lab daemons: ${RSS_IDLE} MiB before, ${RSS_NOW} MiB after; sum of per-daemon peaks (VmHWM) ${RSS_PEAK} MiB."
} >"$REPORT"
cat "$REPORT"
if [[ -n $WRITE_MD ]]; then
  h write-md "$WRITE_MD" "$REPORT" benches/ceph-baselines.sh
  log "wrote results into $WRITE_MD"
fi
