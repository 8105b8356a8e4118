#!/usr/bin/python3
"""Cost of a multi-image RBD capture to the workload it protects.

Runs on the two-site lab (scripts/ceph-lab.sh up), site-a. N images get a
python3-rbd writer each (4 KiB random writes, one in flight, its own
client); meanwhile ROUNDS captures are taken three ways and, for each, the
script prints the seconds per capture, the writers' completed writes per
second during the captures, and how many writes FAILED:

  baseline  `snap_create` on each image in turn: what a capture costs with
            no consistency across images at all (the ceiling).
  group     one RBD group snapshot (what ferry does since session 6):
            librbd takes the images' exclusive locks and tells the writers
            to retry, so they wait.
  lock      rbd_lock_acquire on every image, snapshot each, release (what
            ferry did before): librbd answers the writers' lock requests
            read-only, and their writes fail with EROFS.

Usage: benches/rbd_group_capture.py [IMAGES] [ROUNDS]
"""

import random
import sys
import threading
import time

import rados
import rbd

IMAGES = int(sys.argv[1]) if len(sys.argv) > 1 else 2
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
SITE = "site-a"


def connect():
    c = rados.Rados(clustername=SITE, conffile=f"/etc/ceph/{SITE}.conf")
    c.connect()
    return c


def main():
    cluster = connect()
    io = cluster.open_ioctx("rbd")
    api = rbd.RBD()
    names = [f"bench-gcap-{i}" for i in range(IMAGES)]
    group = "bench-gcap"
    features = (rbd.RBD_FEATURE_LAYERING | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
                | rbd.RBD_FEATURE_OBJECT_MAP | rbd.RBD_FEATURE_FAST_DIFF)
    try:
        api.group_remove(io, group)
    except rbd.ObjectNotFound:
        pass
    for n in names:
        try:
            img = rbd.Image(io, n)
            for s in list(img.list_snaps()):
                img.remove_snap(s["name"])
            img.close()
            api.remove(io, n)
        except rbd.ImageNotFound:
            pass
        api.create(io, n, 64 << 20, old_format=False, features=features)
    api.group_create(io, group)
    grp = rbd.Group(io, group)
    for n in names:
        grp.add_image(io, n)

    print(f"# {IMAGES} images, {ROUNDS} captures per method, one writer per image")
    print(f"{'method':<9} {'s/capture':>10} {'writes/s':>10} {'failed':>8}")
    for method in ["baseline", "group", "lock"]:
        stop = threading.Event()
        done = [0]
        failed = [0]
        lock = threading.Lock()

        def writer(name, seed):
            c = connect()
            wio = c.open_ioctx("rbd")
            img = rbd.Image(wio, name)
            rng = random.Random(seed)
            while not stop.is_set():
                try:
                    img.write(rng.randbytes(4096), rng.randrange(0, 16384) * 4096)
                    with lock:
                        done[0] += 1
                except rbd.Error:
                    with lock:
                        failed[0] += 1
            img.close()
            wio.close()
            c.shutdown()

        threads = [threading.Thread(target=writer, args=(n, i)) for i, n in enumerate(names)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        with lock:
            done[0] = 0
        start = time.monotonic()
        for r in range(ROUNDS):
            snap = f"{method}-{r}"
            if method == "group":
                grp.create_snap(snap)
            else:
                imgs = [rbd.Image(io, n) for n in names]
                if method == "lock":
                    for img in imgs:
                        img.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
                for img in imgs:
                    img.create_snap(snap)
                for img in imgs:
                    if method == "lock":
                        img.lock_release()
                    img.close()
        elapsed = time.monotonic() - start
        with lock:
            writes = done[0]
        stop.set()
        for t in threads:
            t.join()
        print(f"{method:<9} {elapsed / ROUNDS:>10.3f} {writes / elapsed:>10.0f} {failed[0]:>8}")

    api.group_remove(io, group)
    for n in names:
        img = rbd.Image(io, n)
        for s in list(img.list_snaps()):
            try:
                img.remove_snap(s["name"])
            except rbd.Error:
                pass
        img.close()
        api.remove(io, n)
    io.close()
    cluster.shutdown()


if __name__ == "__main__":
    main()
