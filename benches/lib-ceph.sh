# shellcheck shell=bash
# lib-ceph.sh — shared code of the Ceph lab benchmarks, sourced (not run) by
# benches/ceph-baselines.sh and benches/rbd-bench.sh.
#
# What lives here: lab/tool checks, the seeded test image and change set, the measurement wrapper
# (wall + CPU of the command's processes + utime/stime deltas of every lab daemon, via
# benches/ceph_bench.py), image cleanup, and the peer jobs both scripts measure:
# `rbd export-diff | rbd import-diff` (with and without zstd -1), the lab's read/write ceilings,
# `rbd bench`, rbd-mirror in snapshot and journal mode. Callers set RES (results TSV) and WORK
# (scratch dir) through ceph_lib_init, DELTA_COUNT (4 KiB writes of the change set) and IMG_SIZE.
#
# The measured commands are single-quoted on purpose: a child bash expands them (the variables
# they use are exported), and the reports print them verbatim.
# shellcheck disable=SC2016

CEPH_LIB_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAB="$CEPH_LIB_REPO/scripts/ceph-lab.sh"
LAB_DIR="${FERRY_CEPH_LAB_DIR:-/var/lib/ferry-ceph-lab}"
PY=/usr/bin/python3 # python3-rbd exists only for Debian's python, not for pyenv shims on PATH
HELP="$CEPH_LIB_REPO/benches/ceph_bench.py"
A=site-a
B=site-b
SEED="${FERRY_BENCH_SEED:-20261122}"
DELTA_COUNT="${DELTA_COUNT:-32768}"
MIRROR_NOTES=""

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
ra() { rbd --cluster "$A" "$@" </dev/null; }
rb() { rbd --cluster "$B" "$@" </dev/null; }
h() { LAB_DIR="$LAB_DIR" "$PY" "$HELP" "$@"; }
m() { h measure "$RES" "$@"; } # m JOB RUN 'shell command'

# to_bytes 2G|256M|256MiB|16K|12345 -> bytes (binary units).
to_bytes() {
  local v="${1%iB}"
  v="${v%B}"
  numfmt --from=iec "$v" || die "not a size: $1"
}

# ceph_lib_init WORKDIR: root, healthy lab, python3-rbd/zstd/jq present; sets WORK, RES, DATA.
ceph_lib_init() {
  WORK="$1"
  [[ $(id -u) -eq 0 ]] || die "run as root"
  "$LAB" status >/dev/null || die "lab not healthy; run: scripts/ceph-lab.sh up"
  if ! "$PY" -c 'import rbd, rados' 2>/dev/null || ! command -v zstd >/dev/null || ! command -v jq >/dev/null; then
    log "installing python3-rbd python3-rados zstd jq"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-rbd python3-rados zstd jq </dev/null >/dev/null
  fi
  mkdir -p "$WORK" "$LAB_DIR/bench-data"
  RES="$WORK/results.tsv"
  : >"$RES"
  # Same seed and size give the same file, so both scripts share it.
  DATA="$LAB_DIR/bench-data/mix-$IMG_SIZE-$SEED.img"
  export LAB_DIR A B DATA WORK PY HELP RES
}

# make_data: generate $DATA (50 % random / 25 % zero / 25 % text) unless it is there already.
make_data() {
  if [[ ! -f $DATA.done ]]; then
    log "generating $DATA ($((IMG_SIZE >> 20)) MiB, seed $SEED)"
    rm -f "$DATA" "$DATA.done" "$DATA.composition.json"
    h gen "$DATA" "$IMG_SIZE" "$SEED" >"$DATA.composition.json"
    touch "$DATA.done"
  fi
  log "composition: $(cat "$DATA.composition.json"); on disk $(du -h "$DATA" | cut -f1)"
}

# Remove an image with all its snapshots (no-op when missing). Protected snapshots are
# unprotected first. Retries while the image still has watchers (a client closing it).
rm_img() {
  local c="$1" img="$2" s i
  rbd --cluster "$c" info "rbd/$img" >/dev/null 2>&1 || return 0
  for s in $(rbd --cluster "$c" snap ls "rbd/$img" --format json </dev/null | jq -r '.[] | select(.protected == "true") | .name'); do
    rbd --cluster "$c" snap unprotect "rbd/$img@$s" </dev/null >/dev/null 2>&1 || true
  done
  rbd --cluster "$c" snap purge --no-progress "rbd/$img" </dev/null >/dev/null 2>&1 || true
  for i in 1 2 3 4 5 6 7 8 9 10; do
    rbd --cluster "$c" rm --no-progress "rbd/$img" </dev/null >/dev/null 2>&1 && return 0
    sleep "$i"
  done
  rbd --cluster "$c" rm --no-progress "rbd/$img" </dev/null
}

# cleanup_images PREFIX: remove every image named PREFIX* on both sites.
cleanup_images() {
  local c img
  for c in "$A" "$B"; do
    for img in $(rbd --cluster "$c" ls rbd </dev/null); do
      case "$img" in "$1"*) rm_img "$c" "$img" ;; esac
    done
  done
}

# prepare_source IMG: import $DATA as rbd/IMG on site-a, snapshot s1, write the change set,
# snapshot s2. Sets NONZERO, EXTENTS, DIFF_BYTES, DELTA_WRITE_S, DELTA_UNIQUE and saves the
# s1..s2 extent list as $WORK/delta-extents.json.
prepare_source() {
  local img="$1"
  ra import --no-progress "$DATA" "rbd/$img"
  ra snap create "rbd/$img@s1"
  read -r DELTA_WRITE_S DELTA_UNIQUE < <(h delta "$A" "$img" "$SEED" "$DELTA_COUNT")
  ra snap create "rbd/$img@s2"
  NONZERO=$(ra diff "rbd/$img@s1" --format json | jq '[.[] | select(.exists == "true") | .length] | add // 0')
  ra diff --from-snap s1 "rbd/$img@s2" --format json >"$WORK/delta-extents.json"
  EXTENTS=$(jq 'length' "$WORK/delta-extents.json")
  DIFF_BYTES=$(jq '[.[].length] | add // 0' "$WORK/delta-extents.json")
  log "s1 allocated per rbd diff: $NONZERO bytes; delta s1..s2: $EXTENTS extents, $DIFF_BYTES bytes" \
    "($DELTA_COUNT writes, $DELTA_UNIQUE distinct bytes, written in ${DELTA_WRITE_S}s)"
}

# md5_of CLUSTER IMG[@SNAP]: md5 of the whole image as `rbd export` reads it.
md5_of() { rbd --cluster "$1" export --no-progress "rbd/$2" - </dev/null | md5sum | cut -d' ' -f1; }

# run_exportdiff RUN SRC DST DSTZ: full and incremental export-diff | import-diff, plain and with
# zstd -1 / zstd -d, from SRC@s1 / SRC@s1..s2 into fresh site-b images DST and DSTZ. Run 1 checks
# that both standbys' s2 equal the source's s2.
run_exportdiff() {
  local r="$1" sa sb sz img
  export SRC="$2" DST="$3" DSTZ="$4"
  for img in "$DST" "$DSTZ"; do rm_img "$B" "$img"; rb create "rbd/$img" --size "$((IMG_SIZE >> 20))M"; done
  m "full: export-diff | import-diff" "$r" \
    'rbd --cluster $A export-diff --no-progress rbd/$SRC@s1 - | rbd --cluster $B import-diff --no-progress - rbd/$DST'
  m "full: same with zstd -1 / zstd -d" "$r" \
    'rbd --cluster $A export-diff --no-progress rbd/$SRC@s1 - | zstd -1 -q -c | zstd -d -q -c | rbd --cluster $B import-diff --no-progress - rbd/$DSTZ'
  m "incr: export-diff | import-diff" "$r" \
    'rbd --cluster $A export-diff --no-progress --from-snap s1 rbd/$SRC@s2 - | rbd --cluster $B import-diff --no-progress - rbd/$DST'
  m "incr: same with zstd -1 / zstd -d" "$r" \
    'rbd --cluster $A export-diff --no-progress --from-snap s1 rbd/$SRC@s2 - | zstd -1 -q -c | zstd -d -q -c | rbd --cluster $B import-diff --no-progress - rbd/$DSTZ'
  if ((r == 1)); then
    # Correctness of the baseline itself: the standby's s2 must equal the source's s2.
    sa=$(md5_of "$A" "$SRC@s2")
    sb=$(md5_of "$B" "$DST@s2")
    sz=$(md5_of "$B" "$DSTZ@s2")
    [[ $sa == "$sb" && $sa == "$sz" ]] || die "export-diff standby differs from source: $sa $sb $sz"
    log "verified: source@s2 == standby@s2 (md5 $sa)"
  fi
  rm_img "$B" "$DST"
  rm_img "$B" "$DSTZ"
}

# run_zstd_probe RUN SRC: size of the full export-diff stream and of its zstd -1 compression, into
# $WORK/full.raw and $WORK/full.zst.
run_zstd_probe() {
  export SRC="$2"
  m "zstd -1 ratio probe (not a sync)" "$1" \
    'rbd --cluster $A export-diff --no-progress rbd/$SRC@s1 - | tee >(wc -c >$WORK/full.raw) | zstd -1 -q -c | wc -c >$WORK/full.zst'
}

# run_ceilings RUN SRC IMPDST: read side (export-diff of SRC@s1 and of s1..s2 to /dev/null) and
# write side (rbd import of $DATA into site-b image IMPDST).
run_ceilings() {
  local r="$1"
  export SRC="$2" IMPDST="$3"
  m "read ceiling: export-diff full > /dev/null" "$r" \
    'rbd --cluster $A export-diff --no-progress rbd/$SRC@s1 - >/dev/null'
  m "read ceiling: export-diff incr > /dev/null" "$r" \
    'rbd --cluster $A export-diff --no-progress --from-snap s1 rbd/$SRC@s2 - >/dev/null'
  rm_img "$B" "$IMPDST"
  m "write ceiling: rbd import (to site-b)" "$r" \
    'rbd --cluster $B import --no-progress $DATA rbd/$IMPDST'
  rm_img "$B" "$IMPDST"
}

# run_rbd_bench RUNS IMG OUT: rbd bench (16 threads) on a fresh site-a image IMG of IMG_SIZE —
# 4 MiB seq write/read over the image, 4 KiB random write/read of 256 MiB (an eighth of the image
# when smaller) — RUNS times each; the `elapsed:` lines go to OUT.
run_rbd_bench() {
  local runs="$1" img="$2" out="$3" small=$((256 << 20))
  ((small <= IMG_SIZE / 8)) || small=$((IMG_SIZE / 8))
  : >"$out"
  rm_img "$A" "$img"
  ra create "rbd/$img" --size "$((IMG_SIZE >> 20))M"
  _bench() { # _bench LABEL ARGS...
    local label="$1" i line
    shift
    for ((i = 1; i <= runs; i++)); do
      line=$(ra bench "$@" "rbd/$img" | grep -E '^elapsed:' | tail -n 1)
      printf '%s\t%s\t%s\n' "$label" "$i" "$line" >>"$out"
      log "rbd bench $label run $i: $line"
    done
  }
  _bench "4 MiB seq write" --io-type write --io-size 4M --io-pattern seq --io-total "$IMG_SIZE"
  _bench "4 MiB seq read" --io-type read --io-size 4M --io-pattern seq --io-total "$IMG_SIZE"
  _bench "4 KiB rand write" --io-type write --io-size 4K --io-pattern rand --io-total "$small"
  _bench "4 KiB rand read" --io-type read --io-size 4K --io-pattern rand --io-total "$small"
  rm_img "$A" "$img"
}

# run_mirror_snapshot RUNS PREFIX: rbd-mirror snapshot mode, full (enable → standby snapshot
# complete) and incremental (change set, mirror snapshot → complete) of a fresh import of $DATA
# per run, images PREFIX1..N. Run 1 checks standby == primary after the full sync.
run_mirror_snapshot() {
  local runs="$1" prefix="$2" r sa sb
  "$LAB" mirror-down >/dev/null 2>&1 || true
  "$LAB" mirror-up snapshot
  for ((r = 1; r <= runs; r++)); do
    log "run $r/$runs: rbd-mirror snapshot mode"
    export img="$prefix$r"
    rm_img "$A" "$img"
    ra import --no-progress "$DATA" "rbd/$img"
    m "rbd-mirror snapshot: full (enable → standby snapshot complete)" "$r" \
      'rbd --cluster $A mirror image enable rbd/$img snapshot >/dev/null && $PY $HELP wait-snap $A $B $img 600 $WORK/poller.cpu'
    if ((r == 1)); then
      sa=$(md5_of "$A" "$img")
      sb=$(md5_of "$B" "$img")
      [[ $sa == "$sb" ]] || die "rbd-mirror standby differs: $sa $sb"
      log "verified: rbd-mirror standby == primary (md5 $sa)"
    fi
    h delta "$A" "$img" "$SEED" "$DELTA_COUNT" >/dev/null
    m "rbd-mirror snapshot: incr (mirror snapshot → complete)" "$r" \
      'rbd --cluster $A mirror image snapshot rbd/$img >/dev/null && $PY $HELP wait-snap $A $B $img 600 $WORK/poller.cpu'
    ra mirror image disable "rbd/$img" >/dev/null
    rm_img "$A" "$img"
  done
  "$LAB" mirror-down
}

# run_mirror_journal RUNS PREFIX: rbd-mirror journal mode (pool mode "pool": enabling the
# journaling feature starts mirroring). Full: feature enable → a 4 KiB marker written last is seen
# on the standby; incremental: change set written into the journaled image (timed separately, in
# MIRROR_NOTES), then last write → marker on the standby.
run_mirror_journal() {
  local runs="$1" prefix="$2" r t_j plain
  "$LAB" mirror-down >/dev/null 2>&1 || true
  "$LAB" mirror-up journal
  for ((r = 1; r <= runs; r++)); do
    log "run $r/$runs: rbd-mirror journal mode"
    export img="$prefix$r" r
    rm_img "$A" "$img"
    ra import --no-progress "$DATA" "rbd/$img"
    m "rbd-mirror journal: full (feature enable → marker on standby)" "$r" \
      'rbd --cluster $A feature enable rbd/$img journaling && $PY $HELP marker $A $img full-$r && $PY $HELP wait-marker $B $img full-$r 600 $WORK/poller.cpu'
    read -r t_j _ < <(h delta "$A" "$img" "$SEED" "$DELTA_COUNT")
    m "rbd-mirror journal: incr (last write → marker on standby)" "$r" \
      '$PY $HELP marker $A $img incr-$r && $PY $HELP wait-marker $B $img incr-$r 600 $WORK/poller.cpu'
    plain="${DELTA_WRITE_S:-?}"
    MIRROR_NOTES+="journal run $r: $DELTA_COUNT x 4 KiB seeded writes into the journaled image took ${t_j} s (same writes into a plain image: ${plain} s)"$'\n'
    # Pool mode: mirroring ends with the journaling feature; rbd-mirror then drops the standby.
    ra feature disable "rbd/$img" journaling || true
    rm_img "$A" "$img"
  done
  "$LAB" mirror-down
}
