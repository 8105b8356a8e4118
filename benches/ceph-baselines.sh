#!/usr/bin/env bash
# ceph-baselines.sh — baseline measurements on the two-site Ceph lab (scripts/ceph-lab.sh up):
# what ferry has to beat (export-diff | import-diff, with and without zstd, rbd-mirror in snapshot
# and journal mode) and the lab's own ceilings (export-diff to /dev/null, rbd import, rbd bench).
#
#   benches/ceph-baselines.sh [--runs N] [--no-mirror] [--write-md FILE]
#
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

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LAB="$REPO/scripts/ceph-lab.sh"
LAB_DIR="${FERRY_CEPH_LAB_DIR:-/var/lib/ferry-ceph-lab}"
RUNS=3
MIRROR=1
WRITE_MD=""
SEED="${FERRY_BENCH_SEED:-20261122}"
IMG_SIZE="${FERRY_BENCH_IMG_SIZE:-$((2 * 1024 * 1024 * 1024))}" # smaller only for smoke tests
while (($#)); do
  case "$1" in
    --runs) RUNS="$2"; shift 2 ;;
    --no-mirror) MIRROR=0; shift ;;
    --write-md) WRITE_MD="$2"; shift 2 ;;
    *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done

PY=/usr/bin/python3 # python3-rbd exists only for Debian's python, not for pyenv shims on PATH
WORK="$LAB_DIR/bench"
DATA="$WORK/mix-2g.img"
RES="$WORK/results.tsv"
HELP="$WORK/helpers.py"
A=site-a
B=site-b
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
ra() { rbd --cluster "$A" "$@" </dev/null; }
rb() { rbd --cluster "$B" "$@" </dev/null; }

[[ $(id -u) -eq 0 ]] || die "run as root"
"$LAB" status >/dev/null || die "lab not healthy; run: scripts/ceph-lab.sh up"
if ! "$PY" -c 'import rbd, rados' 2>/dev/null || ! command -v zstd >/dev/null; then
  log "installing python3-rbd python3-rados zstd"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-rbd python3-rados zstd </dev/null >/dev/null
fi
mkdir -p "$WORK"
: >"$RES"

cat >"$HELP" <<'PYEOF'
"""Helpers for benches/ceph-baselines.sh: data generation, seeded writes, CPU accounting, waits."""
import glob, json, os, random, resource, statistics, subprocess, sys, threading, time

LAB_DIR = os.environ["LAB_DIR"]
HZ = os.sysconf("SC_CLK_TCK")


def daemon_pids():
    pids = []
    for f in glob.glob(os.path.join(LAB_DIR, "site-*", "run", "*.pid")):
        try:
            pids.append(int(open(f).read().strip()))
        except (OSError, ValueError):
            pass
    return pids


def ticks(pids):
    out = {}
    for p in pids:
        try:
            rest = open(f"/proc/{p}/stat").read().rpartition(")")[2].split()
            out[p] = int(rest[11]) + int(rest[12])
        except OSError:
            pass
    return out


def rss(kind):
    """Sum of VmRSS or VmHWM (peak) of the lab daemons, MiB."""
    tot = 0
    for p in daemon_pids():
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith(kind + ":"):
                    tot += int(line.split()[1])
        except OSError:
            pass
    return tot / 1024


def connect(cluster):
    import rados
    r = rados.Rados(conffile=f"/etc/ceph/{cluster}.conf", name="client.admin",
                    clustername=cluster, conf={"rbd_cache": "false"})
    r.connect()
    return r


def gen(path, size, seed):
    """Sparse file: 50 % random, 25 % zero (holes), 25 % log-like text, 64 KiB..4 MiB pieces."""
    rng = random.Random(seed)
    levels = ["INFO", "WARN", "DEBUG", "ERROR"]
    words = ["replica", "extent", "commit", "epoch", "volume", "snapshot", "flush", "osd", "pg",
             "latency", "bytes", "client", "request", "queue", "timeout", "retry", "write", "read"]
    lines, n = [], 0
    while n < 16 << 20:
        ts = 1700000000 + rng.randrange(10**7)
        ln = "%d.%06d %s [%s] %s %s=%d %s=%x %s\n" % (
            ts, rng.randrange(10**6), rng.choice(levels), rng.choice(words),
            " ".join(rng.choice(words) for _ in range(rng.randrange(3, 9))),
            rng.choice(words), rng.randrange(10**9), rng.choice(words), rng.getrandbits(48),
            rng.choice(words))
        lines.append(ln)
        n += len(ln)
    text = "".join(lines).encode()
    counts = {"random": 0, "zero": 0, "text": 0}
    with open(path, "wb") as f:
        f.truncate(0)
        off = 0
        while off < size:
            ln = min(rng.randint(1, 64) * 65536, size - off)
            r = rng.random()
            kind = "random" if r < 0.5 else ("zero" if r < 0.75 else "text")
            if kind == "random":
                f.seek(off)
                f.write(rng.randbytes(ln))
            elif kind == "text":
                start = rng.randrange(len(text) - ln) if ln < len(text) else 0
                chunk = text[start:start + ln]
                while len(chunk) < ln:
                    chunk += text[: ln - len(chunk)]
                f.seek(off)
                f.write(chunk)
            counts[kind] += ln
            off += ln
        f.truncate(size)
    print(json.dumps({k: round(v / size, 3) for k, v in counts.items()}))


def delta(cluster, image, seed, count=32768, io=4096, inflight=32):
    """count seeded writes of io bytes at io-aligned random offsets via aio; prints seconds."""
    import rbd
    r = connect(cluster)
    ioctx = r.open_ioctx("rbd")
    rng = random.Random(seed)
    sem = threading.Semaphore(inflight)
    errors = []

    def done(comp):
        if comp.get_return_value() < 0:
            errors.append(comp.get_return_value())
        sem.release()

    with rbd.Image(ioctx, image) as im:
        blocks = im.size() // io
        t0 = time.monotonic()
        for _ in range(count):
            off = rng.randrange(blocks) * io
            data = rng.randbytes(io)
            sem.acquire()
            im.aio_write(data, off, done)
        for _ in range(inflight):
            sem.acquire()
        im.flush()
        dt = time.monotonic() - t0
    ioctx.close()
    r.shutdown()
    if errors:
        sys.exit(f"write errors: {errors[:5]}")
    print(f"{dt:.3f}")


def marker(cluster, image, tag):
    """Write a 4 KiB marker (deterministic from tag) into the last block of the image."""
    import rbd
    r = connect(cluster)
    ioctx = r.open_ioctx("rbd")
    with rbd.Image(ioctx, image) as im:
        im.write(random.Random(tag).randbytes(4096), im.size() - 4096)
        im.flush()
    ioctx.close()
    r.shutdown()


def _self_cpu(path):
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with open(path, "w") as f:
        f.write(f"{ru.ru_utime + ru.ru_stime:.3f}\n")


def wait_marker(cluster, image, tag, timeout, cpu_file):
    """Poll the standby until its last block equals the marker (journal mode 'caught up')."""
    import rbd
    want = random.Random(tag).randbytes(4096)
    r = connect(cluster)
    ioctx = r.open_ioctx("rbd")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                with rbd.Image(ioctx, image, read_only=True) as im:
                    if im.read(im.size() - 4096, 4096) == want:
                        return 0
            except (rbd.ImageNotFound, rbd.Error):
                pass
            time.sleep(0.1)
        sys.exit(f"marker not seen on {cluster}/{image} within {timeout}s")
    finally:
        _self_cpu(cpu_file)
        ioctx.close()
        r.shutdown()


def wait_snap(primary, standby, image, timeout, cpu_file):
    """Wait until the standby has the primary's newest mirror snapshot with complete=True."""
    import rbd
    rp, rs = connect(primary), connect(standby)
    iop, ios = rp.open_ioctx("rbd"), rs.open_ioctx("rbd")
    try:
        with rbd.Image(iop, image, read_only=True) as im:
            ids = [s["id"] for s in im.list_snaps()
                   if s.get("namespace") == rbd.RBD_SNAP_NAMESPACE_TYPE_MIRROR
                   and s["mirror"]["state"] == rbd.RBD_SNAP_MIRROR_STATE_PRIMARY]
        if not ids:
            sys.exit(f"{primary}/{image} has no primary mirror snapshot")
        want = max(ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with rbd.Image(ios, image, read_only=True) as im:
                    for s in im.list_snaps():
                        m = s.get("mirror")
                        if m and m["primary_snap_id"] == want and m["complete"]:
                            return 0
            except (rbd.ImageNotFound, rbd.Error):
                pass
            time.sleep(0.1)
        sys.exit(f"snapshot {want} not complete on {standby}/{image} within {timeout}s")
    finally:
        _self_cpu(cpu_file)
        iop.close(); ios.close(); rp.shutdown(); rs.shutdown()


def measure(res, job, run, cmd):
    """Run cmd under bash -o pipefail; append job, run, wall, client CPU, daemon CPU to res."""
    cpu_file = os.path.join(os.path.dirname(res), "poller.cpu")
    if os.path.exists(cpu_file):
        os.unlink(cpu_file)
    pids = daemon_pids()
    d0 = ticks(pids)
    t0 = time.monotonic()
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=os.environ)
    wall = time.monotonic() - t0
    d1 = ticks(pids)
    if p.returncode != 0:
        sys.exit(f"{job}: command failed ({p.returncode}): {cmd}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = ru.ru_utime + ru.ru_stime
    poller = 0.0
    if os.path.exists(cpu_file):
        poller = float(open(cpu_file).read())
        client -= poller
    daemon = sum(d1[p] - d0.get(p, 0) for p in d1) / HZ
    with open(res, "a") as f:
        f.write(f"{job}\t{run}\t{wall:.3f}\t{client:.3f}\t{daemon:.3f}\t{cmd}\n")
    print(f"  {job:34s} run {run}: {wall:7.2f} s wall, CPU client {client:6.2f} s + daemons "
          f"{daemon:6.2f} s (poller {poller:.2f} s excluded)", file=sys.stderr)


def summarize(res):
    rows = {}
    order = []
    for line in open(res):
        job, run, wall, client, daemon, cmd = line.rstrip("\n").split("\t", 5)
        if job not in rows:
            order.append(job)
            rows[job] = {"wall": [], "client": [], "daemon": [], "cmd": cmd}
        rows[job]["wall"].append(float(wall))
        rows[job]["client"].append(float(client))
        rows[job]["daemon"].append(float(daemon))
    print("| job | runs | wall s (median) | wall min–max | CPU-s client | CPU-s daemons | CPU-s total |")
    print("|---|---|---|---|---|---|---|")
    med = statistics.median
    for job in order:
        r = rows[job]
        c, d = med(r["client"]), med(r["daemon"])
        name = job.replace("|", "\\|")  # a pipe inside a job name would end the table cell
        print(f"| {name} | {len(r['wall'])} | {med(r['wall']):.2f} | {min(r['wall']):.2f}–"
              f"{max(r['wall']):.2f} | {c:.2f} | {d:.2f} | {c + d:.2f} |")
    print()
    print("Commands (as run; $A = site-a, $B = site-b):")
    print()
    for job in order:
        print(f"- **{job}**: `{rows[job]['cmd']}`")


def benchsum(path):
    """Median ops/s and MiB/s per rbd bench label from lines 'label\trun\telapsed: ...'."""
    import re
    rows, order = {}, []
    for line in open(path):
        label, run, text = line.rstrip("\n").split("\t", 2)
        m = re.search(r"ops/sec: ([0-9.]+)\s+bytes/sec: ([0-9.]+) (\w+)/s", text)
        if not m:
            continue
        scale = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[m.group(3)]
        if label not in rows:
            order.append(label)
            rows[label] = ([], [])
        rows[label][0].append(float(m.group(1)))
        rows[label][1].append(float(m.group(2)) * scale)
    print("| rbd bench (16 threads) | runs | IOPS (median) | MiB/s (median) | MiB/s min–max |")
    print("|---|---|---|---|---|")
    for label in order:
        ops, mib = rows[label]
        print(f"| {label} | {len(ops)} | {statistics.median(ops):.0f} | {statistics.median(mib):.0f} "
              f"| {min(mib):.0f}–{max(mib):.0f} |")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gen":
        gen(args[0], int(args[1]), int(args[2]))
    elif cmd == "delta":
        delta(args[0], args[1], int(args[2]))
    elif cmd == "marker":
        marker(args[0], args[1], args[2])
    elif cmd == "wait-marker":
        sys.exit(wait_marker(args[0], args[1], args[2], float(args[3]), args[4]))
    elif cmd == "wait-snap":
        sys.exit(wait_snap(args[0], args[1], args[2], float(args[3]), args[4]))
    elif cmd == "measure":
        measure(args[0], args[1], args[2], args[3])
    elif cmd == "summarize":
        summarize(args[0])
    elif cmd == "benchsum":
        benchsum(args[0])
    elif cmd == "rss":
        print(f"{rss(args[0]):.0f}")
    else:
        sys.exit(f"unknown helper command {cmd}")
PYEOF

export LAB_DIR A B DATA WORK PY HELP
h() { LAB_DIR="$LAB_DIR" "$PY" "$HELP" "$@"; }
m() { h measure "$RES" "$@"; } # m JOB RUN 'shell command'

# Remove an image with all its snapshots (no-op when missing).
rm_img() {
  local c="$1" img="$2"
  if rbd --cluster "$c" info "rbd/$img" >/dev/null 2>&1; then
    rbd --cluster "$c" snap purge --no-progress "rbd/$img" </dev/null >/dev/null 2>&1 || true
    rbd --cluster "$c" rm --no-progress "rbd/$img" </dev/null >/dev/null
  fi
}
cleanup_images() {
  local c img
  for c in "$A" "$B"; do
    for img in $(rbd --cluster "$c" ls rbd); do
      case "$img" in bl-*) rm_img "$c" "$img" ;; esac
    done
  done
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
RSS_IDLE=$(h rss VmRSS)
log "lab daemons RSS before: ${RSS_IDLE} MiB"
log "ceph $(ceph --version | awk '{print $3}'), $(nproc) cores, runs=$RUNS, seed=$SEED"
cleanup_images

# 1. Test data ------------------------------------------------------------------------------
if [[ ! -f $DATA.seed-$SEED.size-$IMG_SIZE ]]; then
  log "generating $DATA (2 GiB, seed $SEED)"
  rm -f "$DATA" "$DATA".seed-*
  h gen "$DATA" "$IMG_SIZE" "$SEED" | tee "$WORK/composition.json"
  touch "$DATA.seed-$SEED.size-$IMG_SIZE"
fi
log "composition: $(cat "$WORK/composition.json"); on disk $(du -h "$DATA" | cut -f1)"
ra import --no-progress "$DATA" rbd/bl-src
ra snap create rbd/bl-src@s1
DELTA_WRITE_S=$(h delta "$A" bl-src "$SEED")
ra snap create rbd/bl-src@s2
NONZERO=$(ra diff rbd/bl-src@s1 --format json | jq '[.[] | select(.exists == "true") | .length] | add')
EXTENTS=$(ra diff --from-snap s1 rbd/bl-src@s2 --format json | jq 'length')
DELTA_BYTES=$(ra diff --from-snap s1 rbd/bl-src@s2 --format json | jq '[.[].length] | add')
log "s1 allocated per rbd diff: $NONZERO bytes; delta s1..s2: $EXTENTS extents, $DELTA_BYTES bytes" \
  "(written in ${DELTA_WRITE_S}s)"

# 2. export-diff | import-diff ------------------------------------------------------------
for ((r = 1; r <= RUNS; r++)); do
  log "run $r/$RUNS: export-diff | import-diff"
  for img in bl-dst bl-dstz; do rm_img "$B" "$img"; rb create "rbd/$img" --size "$((IMG_SIZE >> 20))M"; done
  m "full: export-diff | import-diff" "$r" \
    'rbd --cluster $A export-diff --no-progress rbd/bl-src@s1 - | rbd --cluster $B import-diff --no-progress - rbd/bl-dst'
  m "full: same with zstd -1 / zstd -d" "$r" \
    'rbd --cluster $A export-diff --no-progress rbd/bl-src@s1 - | zstd -1 -q -c | zstd -d -q -c | rbd --cluster $B import-diff --no-progress - rbd/bl-dstz'
  m "incr: export-diff | import-diff" "$r" \
    'rbd --cluster $A export-diff --no-progress --from-snap s1 rbd/bl-src@s2 - | rbd --cluster $B import-diff --no-progress - rbd/bl-dst'
  m "incr: same with zstd -1 / zstd -d" "$r" \
    'rbd --cluster $A export-diff --no-progress --from-snap s1 rbd/bl-src@s2 - | zstd -1 -q -c | zstd -d -q -c | rbd --cluster $B import-diff --no-progress - rbd/bl-dstz'
  if ((r == 1)); then
    # Correctness of the baseline itself: the standby's s2 must equal the source's s2.
    sa=$(ra export --no-progress rbd/bl-src@s2 - | md5sum | cut -d' ' -f1)
    sb=$(rb export --no-progress rbd/bl-dst@s2 - | md5sum | cut -d' ' -f1)
    sz=$(rb export --no-progress rbd/bl-dstz@s2 - | md5sum | cut -d' ' -f1)
    [[ $sa == "$sb" && $sa == "$sz" ]] || die "standby differs from source: $sa $sb $sz"
    log "verified: source@s2 == standby@s2 (md5 $sa)"
    m "zstd -1 ratio probe (not a sync)" "$r" \
      'rbd --cluster $A export-diff --no-progress rbd/bl-src@s1 - | tee >(wc -c >$WORK/full.raw) | zstd -1 -q -c | wc -c >$WORK/full.zst'
  fi
done
for img in bl-dst bl-dstz; do rm_img "$B" "$img"; done

# 3. Ceilings ---------------------------------------------------------------------------------
for ((r = 1; r <= RUNS; r++)); do
  log "run $r/$RUNS: ceilings"
  m "read ceiling: export-diff full > /dev/null" "$r" \
    'rbd --cluster $A export-diff --no-progress rbd/bl-src@s1 - >/dev/null'
  m "read ceiling: export-diff incr > /dev/null" "$r" \
    'rbd --cluster $A export-diff --no-progress --from-snap s1 rbd/bl-src@s2 - >/dev/null'
  rm_img "$B" bl-imp
  m "write ceiling: rbd import (to site-b)" "$r" \
    'rbd --cluster $B import --no-progress $DATA rbd/bl-imp'
  rm_img "$B" bl-imp
done

BENCH_TXT="$WORK/rbd-bench.txt"
: >"$BENCH_TXT"
ra create rbd/bl-bench --size "$((IMG_SIZE >> 20))M"
bench() { # bench LABEL ARGS... -> median of RUNS "ops/sec" and "bytes/sec"
  local label="$1"; shift
  local i line
  for ((i = 1; i <= RUNS; i++)); do
    line=$(ra bench "$@" rbd/bl-bench | grep -E '^elapsed:' | tail -n 1)
    printf '%s\t%s\t%s\n' "$label" "$i" "$line" >>"$BENCH_TXT"
    log "rbd bench $label run $i: $line"
  done
}
bench "4 MiB seq write" --io-type write --io-size 4M --io-pattern seq --io-total 2G
bench "4 MiB seq read" --io-type read --io-size 4M --io-pattern seq --io-total 2G
bench "4 KiB rand write" --io-type write --io-size 4K --io-pattern rand --io-total 256M
bench "4 KiB rand read" --io-type read --io-size 4K --io-pattern rand --io-total 256M
rm_img "$A" bl-bench

# 4. rbd-mirror ------------------------------------------------------------------------------
MIRROR_NOTES=""
if ((MIRROR)); then
  "$LAB" mirror-down >/dev/null 2>&1 || true
  "$LAB" mirror-up snapshot
  for ((r = 1; r <= RUNS; r++)); do
    log "run $r/$RUNS: rbd-mirror snapshot mode"
    img="bl-ms$r"
    ra import --no-progress "$DATA" "rbd/$img"
    export img
    m "rbd-mirror snapshot: full (enable → standby snapshot complete)" "$r" \
      'rbd --cluster $A mirror image enable rbd/$img snapshot >/dev/null && $PY $HELP wait-snap $A $B $img 600 $WORK/poller.cpu'
    if ((r == 1)); then
      sa=$(ra export --no-progress "rbd/$img" - | md5sum | cut -d' ' -f1)
      sb=$(rb export --no-progress "rbd/$img" - | md5sum | cut -d' ' -f1)
      [[ $sa == "$sb" ]] || die "rbd-mirror standby differs: $sa $sb"
      log "verified: rbd-mirror standby == primary (md5 $sa)"
    fi
    h delta "$A" "$img" "$SEED" >/dev/null
    m "rbd-mirror snapshot: incr (mirror snapshot → complete)" "$r" \
      'rbd --cluster $A mirror image snapshot rbd/$img >/dev/null && $PY $HELP wait-snap $A $B $img 600 $WORK/poller.cpu'
    ra mirror image disable "rbd/$img" >/dev/null
    rm_img "$A" "$img"
  done
  "$LAB" mirror-down

  "$LAB" mirror-up journal
  for ((r = 1; r <= RUNS; r++)); do
    log "run $r/$RUNS: rbd-mirror journal mode"
    img="bl-mj$r"
    ra import --no-progress "$DATA" "rbd/$img"
    export img r
    # Pool mode "pool": enabling the journaling feature enables mirroring; the marker is written
    # last, so seeing it on the standby means everything before it was replayed.
    m "rbd-mirror journal: full (feature enable → marker on standby)" "$r" \
      'rbd --cluster $A feature enable rbd/$img journaling && $PY $HELP marker $A $img full-$r && $PY $HELP wait-marker $B $img full-$r 600 $WORK/poller.cpu'
    t_j=$(h delta "$A" "$img" "$SEED")
    m "rbd-mirror journal: incr (last write → marker on standby)" "$r" \
      '$PY $HELP marker $A $img incr-$r && $PY $HELP wait-marker $B $img incr-$r 600 $WORK/poller.cpu'
    MIRROR_NOTES+="journal run $r: 32768 x 4 KiB seeded writes into the journaled image took ${t_j} s (same writes into a plain image: ${DELTA_WRITE_S} s)"$'\n'
    # Pool mode: mirroring ends with the journaling feature; rbd-mirror then drops the standby.
    ra feature disable "rbd/$img" journaling || true
    rm_img "$A" "$img"
  done
  "$LAB" mirror-down
fi
sleep 2
cleanup_images

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
  echo "Image: $((IMG_SIZE >> 20)) MiB, composition $(cat "$WORK/composition.json") by bytes;" \
    "rbd diff reports $NONZERO bytes allocated at s1. Incremental: 32768 seeded 4 KiB writes →" \
    "$EXTENTS extents / $DELTA_BYTES bytes in \`rbd diff --from-snap s1\`" \
    "(written by python3-rbd aio, 32 in flight, in ${DELTA_WRITE_S} s)."
  echo "Full export-diff stream: $FULL_RAW bytes; zstd -1: $FULL_ZST bytes" \
    "(ratio $(awk -v a="$FULL_RAW" -v b="$FULL_ZST" 'BEGIN {printf "%.2f", a/b}'))."
  echo
  h summarize "$RES"
  echo
  echo "rbd bench on site-a (16 threads, image bl-bench 2 GiB; each line one run):"
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
  # Replace the generated section between the markers; the prose around it is kept.
  "$PY" - "$WRITE_MD" "$REPORT" <<'PYEOF'
import sys
md, rep = sys.argv[1], open(sys.argv[2]).read()
begin, end = "<!-- BEGIN GENERATED by benches/ceph-baselines.sh -->", "<!-- END GENERATED -->"
try:
    text = open(md).read()
except FileNotFoundError:
    text = f"{begin}\n{end}\n"
if begin not in text or end not in text:
    text += f"\n{begin}\n{end}\n"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(md, "w").write(f"{head}{begin}\n{rep}{end}{tail}")
PYEOF
  log "wrote results into $WRITE_MD"
fi
