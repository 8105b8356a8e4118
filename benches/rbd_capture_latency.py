#!/usr/bin/python3
"""Write latency a protected workload sees while its group is captured.

Runs on the two-site lab (scripts/ceph-lab.sh up), site-a. N images
(exclusive-lock, object-map, fast-diff) in one RBD group get a python3-rbd
writer each (4 KiB random writes, one in flight, 5 ms apart, its own
client). For each method, ROUNDS captures are taken GAP seconds apart and
the script prints the seconds per capture (p50/max) and the writers'
per-write latency over the whole window (p50/p99/max, ms):

  none     no capture: the writers' own latency (the reference).
  user     a user snapshot of each image in turn (no cross-image order).
  group    one RBD group snapshot only (quiesce notifications sent, their
           errors ignored: what ferry's capture passes).
  group-noquiesce
           the same with RBD_SNAP_CREATE_SKIP_QUIESCE: no quiesce round
           trip to the writers (only application hooks, e.g. rbd-nbd's
           fsfreeze, act on it; the exclusive locks still make the point
           crash-consistent).
  serial   ferry before 66490c7: each image's diff-base user snapshot in
           turn, then the group snapshot.
  parallel ferry since 66490c7: the diff-base snapshots at once (one
           thread each), then the group snapshot.

Every snap_create waits for a monitor commit (the snapshot id), up to
paxos_propose_interval (1 s by default); the group snapshot also holds the
images' exclusive locks across its commit, which is what the writers wait
for (a group capture's p99 write latency is about that second).

Usage: benches/rbd_capture_latency.py [IMAGES] [ROUNDS] [GAP] [METHODS]
       e.g. benches/rbd_capture_latency.py 3 6 1.0 none,user,group,serial,parallel
"""

import random
import sys
import threading
import time

import rados
import rbd

IMAGES = int(sys.argv[1]) if len(sys.argv) > 1 else 3
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 6
GAP = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
METHODS = (sys.argv[4] if len(sys.argv) > 4 else "none,user,group,serial,parallel").split(",")
SITE = "site-a"
POOL = "rbd"
NAMES = [f"bench-caplat-{i}" for i in range(IMAGES)]
GROUP = "bench-caplat"
FEATURES = (
    rbd.RBD_FEATURE_LAYERING
    | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
    | rbd.RBD_FEATURE_OBJECT_MAP
    | rbd.RBD_FEATURE_FAST_DIFF
)


def connect():
    cluster = rados.Rados(clustername=SITE, conffile=f"/etc/ceph/{SITE}.conf")
    cluster.connect()
    return cluster


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else 0.0


def writer(name, seed, stop, latencies, guard):
    cluster = connect()
    ioctx = cluster.open_ioctx(POOL)
    image = rbd.Image(ioctx, name)
    rng = random.Random(seed)
    while not stop.is_set():
        start = time.monotonic()
        image.write(rng.randbytes(4096), rng.randrange(0, 16384) * 4096)
        took = time.monotonic() - start
        with guard:
            latencies.append(took)
        time.sleep(0.005)
    image.close()
    ioctx.close()
    cluster.shutdown()


def snap_each(ioctx, snap, parallel):
    images = [rbd.Image(ioctx, n) for n in NAMES]
    if parallel:
        threads = [threading.Thread(target=i.create_snap, args=(snap,)) for i in images]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for image in images:
            image.create_snap(snap)
    for image in images:
        image.close()


def capture(method, ioctx, group, snap):
    if method == "user":
        snap_each(ioctx, "u" + snap, parallel=False)
    elif method == "group":
        group.create_snap(snap, rbd.RBD_SNAP_CREATE_IGNORE_QUIESCE_ERROR)
    elif method == "group-noquiesce":
        group.create_snap(snap, rbd.RBD_SNAP_CREATE_SKIP_QUIESCE)
    elif method in ("serial", "parallel"):
        snap_each(ioctx, "u" + snap, parallel=(method == "parallel"))
        group.create_snap(snap)
    elif method != "none":
        raise SystemExit(f"unknown method {method}")


def cleanup(ioctx, group):
    for snap in list(group.list_snaps()):
        group.remove_snap(snap["name"])
    for name in NAMES:
        image = rbd.Image(ioctx, name)
        for snap in list(image.list_snaps()):
            try:
                image.remove_snap(snap["name"])
            except rbd.Error:
                pass
        image.close()


def main():
    cluster = connect()
    ioctx = cluster.open_ioctx(POOL)
    api = rbd.RBD()
    for name in NAMES:
        try:
            api.create(ioctx, name, 64 << 20, old_format=False, features=FEATURES)
        except rbd.ImageExists:
            pass
    try:
        api.group_create(ioctx, GROUP)
    except rbd.ObjectExists:
        pass
    group = rbd.Group(ioctx, GROUP)
    for name in NAMES:
        try:
            group.add_image(ioctx, name)
        except rbd.Error:
            pass
    print(f"{IMAGES} images, {ROUNDS} captures {GAP} s apart per method", flush=True)
    try:
        for method in METHODS:
            stop, guard, latencies = threading.Event(), threading.Lock(), []
            threads = [
                threading.Thread(target=writer, args=(n, i, stop, latencies, guard))
                for i, n in enumerate(NAMES)
            ]
            for t in threads:
                t.start()
            time.sleep(1.0)
            with guard:
                latencies.clear()
            captures = []
            for round_no in range(ROUNDS):
                start = time.monotonic()
                capture(method, ioctx, group, f"{method}-{round_no}-{int(start * 1000)}")
                captures.append(time.monotonic() - start)
                time.sleep(GAP)
            stop.set()
            for t in threads:
                t.join()
            ms = [x * 1000 for x in latencies]
            print(
                f"{method:8} capture s p50={percentile(captures, 50):.3f} max={max(captures):.3f}"
                f" | write ms p50={percentile(ms, 50):.1f} p99={percentile(ms, 99):.1f}"
                f" max={max(ms):.1f} n={len(ms)}",
                flush=True,
            )
    finally:
        cleanup(ioctx, group)
        group_api = rbd.RBD()
        for name in NAMES:
            try:
                group.remove_image(ioctx, name)
            except rbd.Error:
                pass
            try:
                group_api.remove(ioctx, name)
            except rbd.Error:
                pass
        try:
            group_api.group_remove(ioctx, GROUP)
        except rbd.Error:
            pass
        ioctx.close()
        cluster.shutdown()


if __name__ == "__main__":
    main()
