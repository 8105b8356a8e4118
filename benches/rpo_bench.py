#!/usr/bin/python3
"""Helpers of benches/rpo-bench.sh: a rate-paced RBD writer and RPO-lag samplers.

  write CLUSTER RATE SECONDS SEED OUT IMAGE...
      4 KiB writes at random 4 KiB-aligned offsets (the last block excluded) of randomly chosen
      IMAGEs, paced by a token bucket to RATE bytes/s in total (10 ms ticks, at most 64 in
      flight and 64 new writes per tick), for SECONDS; when the cluster cannot keep up the
      writer falls behind and the achieved rate says so. Every 100 ms each image also gets a
      timestamp marker in its last block: 8 bytes of wall-clock nanoseconds at submission after
      a magic. A copy that holds a marker T holds every write acknowledged before T (ferry's
      snapshots and rbd-mirror's journal replay keep write order per image). OUT gets a JSON
      summary (achieved rate, writes, ticks behind schedule, write latency).
  sample-ferry FERRY DIR GROUP SECONDS INTERVAL OUT [CLUSTER IMAGE...]
      Every INTERVAL s for SECONDS: `FERRY --dir DIR status --json`, GROUP's progress
      (rpo_lag_secs, last_cycle_seconds, idle_checks, cycles, state) as one JSON line in OUT.
      With CLUSTER IMAGE…: also the marker age of the newest `ferry-rp-*` snapshot of each
      standby IMAGE (an independent measurement of the same lag).
  sample-journal CLUSTER SECONDS INTERVAL OUT IMAGE...
      Every INTERVAL s: marker age of each standby IMAGE's head (rbd-mirror journal replay) and
      entries_behind_primary from its mirror image status.
  stats OUT FIELD [FIELD...]
      p50 / p99 / max of each FIELD (a key of the JSON lines; the group value of per-image
      fields is the oldest image's) as one line per field: "FIELD p50 p99 max n missing lower",
      lower = samples where a standby held no marker yet, whose age is then the lower bound
      "now - the writer's first marker" (RPO_WRITER_START names the writer's OUT.start file).
  idle OUT
      The daemon's no-change cycle from sample-ferry rows taken while nothing was written:
      "CHECKS SECONDS CYCLES p50 p99 max" — idle checks and committed cycles in the window, and
      last_cycle_seconds of each new idle check (a sample whose idle_checks grew).

Run by /usr/bin/python3 (python3-rbd exists only for Debian's python).
"""
import json
import os
import random
import struct
import subprocess
import sys
import threading
import time

BLOCK = 4096
MAGIC = b"ferry-rpo-marker"
TICK = 0.01
INFLIGHT = 64
MARKER_EVERY = 0.1


def connect(cluster):
    import rados
    r = rados.Rados(conffile=f"/etc/ceph/{cluster}.conf", name="client.admin",
                    clustername=cluster, conf={"rbd_cache": "false"})
    r.connect()
    return r


def marker_block(now_ns):
    return (MAGIC + struct.pack("<Q", now_ns)).ljust(BLOCK, b"\0")


def marker_time(block):
    """Wall-clock seconds of a marker block, or None when the block holds no marker."""
    if block[:len(MAGIC)] != MAGIC:
        return None
    return struct.unpack("<Q", block[len(MAGIC):len(MAGIC) + 8])[0] / 1e9


def percentile(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


def write(cluster, rate, seconds, seed, out, images):
    import rbd
    rate, seconds = float(rate), float(seconds)
    r = connect(cluster)
    ioctx = r.open_ioctx("rbd")
    imgs = [rbd.Image(ioctx, n) for n in images]
    blocks = [im.size() // BLOCK - 1 for im in imgs]
    rng = random.Random(int(seed))
    payload = [rng.randbytes(BLOCK) for _ in range(64)]
    sem = threading.Semaphore(INFLIGHT)
    lock = threading.Lock()
    st = {"done": 0, "errors": 0, "lat": []}

    def completion(t_submit):
        def done(comp):
            with lock:
                st["done"] += 1
                if comp.get_return_value() < 0:
                    st["errors"] += 1
                if len(st["lat"]) < 200000:
                    st["lat"].append(time.monotonic() - t_submit)
            sem.release()
        return done

    def submit(im, data, off):
        sem.acquire()
        im.aio_write(data, off, completion(time.monotonic()))

    t0 = time.monotonic()
    issued = markers = behind_ticks = ticks = 0
    next_marker = t0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        due = int(rate * (now - t0) / BLOCK)
        ticks += 1
        if due - issued > INFLIGHT:
            behind_ticks += 1
        burst = 0
        while issued < due and burst < INFLIGHT:  # a marker at least every tick
            burst += 1
            i = rng.randrange(len(imgs))
            submit(imgs[i], payload[issued % len(payload)], rng.randrange(blocks[i]) * BLOCK)
            issued += 1
        if now >= next_marker:
            stamp = time.time_ns()
            block = marker_block(stamp)
            for im, b in zip(imgs, blocks):
                submit(im, block, b * BLOCK)
                markers += 1
            if next_marker == t0:
                with open(out + ".start", "w") as f:
                    f.write(f"{stamp / 1e9}\n")
            next_marker += MARKER_EVERY
        time.sleep(max(0.0, TICK - (time.monotonic() - now)))
    for _ in range(INFLIGHT):
        sem.acquire()
    wall = time.monotonic() - t0
    for im in imgs:
        im.flush()
        im.close()
    ioctx.close()
    r.shutdown()
    lat = st["lat"]
    summary = {
        "target_bytes_per_s": rate, "seconds": round(wall, 3), "writes": issued,
        "markers": markers, "errors": st["errors"],
        "achieved_bytes_per_s": round(issued * BLOCK / wall),
        "ticks_behind_schedule": behind_ticks, "ticks": ticks,
        "latency_p50_ms": round(percentile(lat, 50) * 1e3, 2),
        "latency_p99_ms": round(percentile(lat, 99) * 1e3, 2),
    }
    with open(out, "w") as f:
        json.dump(summary, f)
    if st["errors"]:
        sys.exit(f"{st['errors']} write errors")


def _pace(seconds, interval):
    """Yields at t0, t0 + interval, … for seconds (skips ticks missed by a slow sample)."""
    t0 = time.monotonic()
    k = 0
    while True:
        target = t0 + k * interval
        now = time.monotonic()
        if target - t0 >= seconds:
            return
        if target > now:
            time.sleep(target - now)
        yield
        k = max(k + 1, int((time.monotonic() - t0) / interval) + 1)


def _age(marker, now):
    """(age, lower_bound): a standby without any marker yet is at least as old as the
    writer's first marker (its start file, from RPO_WRITER_START), when there is one."""
    if marker is not None:
        return now - marker, False
    try:
        with open(os.environ["RPO_WRITER_START"]) as f:
            return now - float(f.read()), True
    except (KeyError, OSError, ValueError):
        return None, False


def _newest_rp_marker(ioctx, image):
    import rbd
    with rbd.Image(ioctx, image, read_only=True) as im:
        rps = [s["name"] for s in im.list_snaps() if s["name"].startswith("ferry-rp-")]
        if not rps:
            return None
        newest = max(rps, key=lambda n: int(n.rsplit("-", 1)[1]))
    with rbd.Image(ioctx, image, snapshot=newest, read_only=True) as im:
        return marker_time(im.read(im.size() - BLOCK, BLOCK))


def sample_ferry(ferry, adir, group, seconds, interval, out, cluster=None, *images):
    ioctx = r = None
    if cluster and images:
        r = connect(cluster)
        ioctx = r.open_ioctx("rbd")
    with open(out, "w") as f:
        for _ in _pace(float(seconds), float(interval)):
            p = subprocess.run([ferry, "--dir", adir, "status", "--json"], capture_output=True,
                               check=True, text=True)
            groups = json.loads(p.stdout)["groups"]
            prog = next((g.get("progress") for g in groups if g.get("name") == group), None) or {}
            row = {k: prog.get(k) for k in
                   ("rpo_lag_secs", "last_cycle_seconds", "idle_checks", "cycles", "state")}
            row["t"] = time.time()
            if ioctx is not None:
                ages = [_age(_newest_rp_marker(ioctx, n), time.time()) for n in images]
                row["marker_age"] = [a for a, _ in ages]
                row["marker_lower_bound"] = any(lb for _, lb in ages)
            f.write(json.dumps(row) + "\n")
            f.flush()
    if r is not None:
        ioctx.close()
        r.shutdown()


def sample_journal(cluster, seconds, interval, out, *images):
    import rbd
    r = connect(cluster)
    ioctx = r.open_ioctx("rbd")
    with open(out, "w") as f:
        for _ in _pace(float(seconds), float(interval)):
            ages, behind, states = [], [], []
            for n in images:
                try:
                    with rbd.Image(ioctx, n, read_only=True) as im:
                        m = marker_time(im.read(im.size() - BLOCK, BLOCK))
                        status = im.mirror_image_get_status()
                except (rbd.ImageNotFound, rbd.Error):
                    m, status = None, {}
                ages.append(_age(m, time.time()))
                desc = status.get("description", "") if status else ""
                entries = None
                if "{" in desc:
                    try:
                        entries = json.loads(desc[desc.index("{"):]).get("entries_behind_primary")
                    except ValueError:
                        pass
                behind.append(entries)
                states.append(desc.split(",")[0])
            f.write(json.dumps({"t": time.time(), "marker_age": [a for a, _ in ages],
                                "marker_lower_bound": any(lb for _, lb in ages),
                                "entries_behind_primary": behind, "state": states}) + "\n")
            f.flush()
    ioctx.close()
    r.shutdown()


def stats(out, *fields):
    rows = [json.loads(line) for line in open(out) if line.strip()]
    for field in fields:
        vals = []
        missing = 0
        for row in rows:
            v = row.get(field)
            if isinstance(v, list):  # per image: the group is as old as its oldest image
                v = None if not v or any(x is None for x in v) else max(v)
            if v is None:
                missing += 1
            else:
                vals.append(float(v))
        lower = sum(1 for row in rows if field == "marker_age" and row.get("marker_lower_bound"))
        if not vals:
            print(f"{field} nan nan nan 0 {missing} {lower}")
            continue
        print(f"{field} {percentile(vals, 50):.3f} {percentile(vals, 99):.3f} {max(vals):.3f} "
              f"{len(vals)} {missing} {lower}")


def idle(out):
    rows = [json.loads(line) for line in open(out) if line.strip()]
    secs = [row["last_cycle_seconds"] for prev, row in zip(rows, rows[1:])
            if (row.get("idle_checks") or 0) > (prev.get("idle_checks") or 0)
            and row.get("last_cycle_seconds") is not None]
    checks = (rows[-1].get("idle_checks") or 0) - (rows[0].get("idle_checks") or 0)
    cycles = (rows[-1].get("cycles") or 0) - (rows[0].get("cycles") or 0)
    window = rows[-1]["t"] - rows[0]["t"]
    if not secs:
        print(f"{checks} {window:.1f} {cycles} nan nan nan")
        return
    print(f"{checks} {window:.1f} {cycles} {percentile(secs, 50):.3f} {percentile(secs, 99):.3f} "
          f"{max(secs):.3f}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "write":
        write(*args[:5], args[5:])
    elif cmd == "sample-ferry":
        sample_ferry(*args)
    elif cmd == "sample-journal":
        sample_journal(*args)
    elif cmd == "idle":
        idle(*args)
    elif cmd == "stats":
        stats(*args)
    else:
        sys.exit(__doc__)
