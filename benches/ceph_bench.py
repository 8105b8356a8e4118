"""Helpers of the Ceph lab benchmarks (benches/lib-ceph.sh, ceph-baselines.sh, rbd-bench.sh).

Test-data generation, the seeded change set, CPU accounting of commands and lab daemons, waits for
rbd-mirror, result summaries, and the ferry-vs-peers report of rbd-bench.sh. Run by /usr/bin/python3
(python3-rbd exists only for Debian's python).
"""
import glob, json, os, random, resource, statistics, subprocess, sys, threading, time

LAB_DIR = os.environ.get("LAB_DIR", "/var/lib/ferry-ceph-lab")
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
    """count seeded writes of io bytes at io-aligned random offsets via aio.

    Prints "SECONDS UNIQUE_BYTES" (bytes of distinct blocks written: offsets can repeat). The
    offsets and data depend only on seed, count and the image size, so every image of the same
    size gets the same change set."""
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
        seen = set()
        t0 = time.monotonic()
        for _ in range(count):
            off = rng.randrange(blocks) * io
            seen.add(off)
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
    print(f"{dt:.3f} {len(seen) * io}")


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
    # Long-running processes that are not children of the command (ferry's standby agent) are
    # charged to the client column from their /proc ticks, like the daemons.
    extra = [int(x) for x in os.environ.get("BENCH_EXTRA_PIDS", "").split()]
    d0, e0 = ticks(pids), ticks(extra)
    t0 = time.monotonic()
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=os.environ)
    wall = time.monotonic() - t0
    d1, e1 = ticks(pids), ticks(extra)
    if p.returncode != 0:
        sys.exit(f"{job}: command failed ({p.returncode}): {cmd}")
    if set(e1) != set(extra):
        sys.exit(f"{job}: process(es) {sorted(set(extra) - set(e1))} died during the job")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = ru.ru_utime + ru.ru_stime
    poller = 0.0
    if os.path.exists(cpu_file):
        poller = float(open(cpu_file).read())
        client -= poller
    agents = sum(e1[p] - e0.get(p, 0) for p in e1) / HZ
    client += agents
    daemon = sum(d1[p] - d0.get(p, 0) for p in d1) / HZ
    with open(res, "a") as f:
        f.write(f"{job}\t{run}\t{wall:.3f}\t{client:.3f}\t{daemon:.3f}\t{cmd}\n")
    print(f"  {job:34s} run {run}: {wall:7.2f} s wall, CPU client {client:6.2f} s "
          f"(agent {agents:.2f} s) + daemons {daemon:6.2f} s (poller {poller:.2f} s excluded)",
          file=sys.stderr)


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
    print("| job | runs | wall s (median) | wall min–max | CPU-s client (ferry: incl. standby agent) "
          "| CPU-s daemons | CPU-s total |")
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


def bench_rows(path):
    """{label: ([ops/s], [MiB/s])} from rbd bench lines 'label\trun\telapsed: ...', in file order."""
    import re
    rows = {}
    for line in open(path):
        label, run, text = line.rstrip("\n").split("\t", 2)
        m = re.search(r"ops/sec: ([0-9.]+)\s+bytes/sec: ([0-9.]+) (\w+)/s", text)
        if not m:
            continue
        scale = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[m.group(3)]
        rows.setdefault(label, ([], []))
        rows[label][0].append(float(m.group(1)))
        rows[label][1].append(float(m.group(2)) * scale)
    return rows


def benchsum(path):
    """Median ops/s and MiB/s per rbd bench label."""
    rows = bench_rows(path)
    order = list(rows)
    print("| rbd bench (16 threads) | runs | IOPS (median) | MiB/s (median) | MiB/s min–max |")
    print("|---|---|---|---|---|")
    for label in order:
        ops, mib = rows[label]
        print(f"| {label} | {len(ops)} | {statistics.median(ops):.0f} | {statistics.median(mib):.0f} "
              f"| {min(mib):.0f}–{max(mib):.0f} |")


def write_md(md, report, script):
    """Replace the section between the generated-by markers of md with report (prose kept)."""
    rep = open(report).read()
    begin, end = f"<!-- BEGIN GENERATED by {script} -->", "<!-- END GENERATED -->"
    try:
        text = open(md).read()
    except FileNotFoundError:
        text = f"{begin}\n{end}\n"
    if begin not in text or end not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    open(md, "w").write(f"{head}{begin}\n{rep}{end}{tail}")


def job_medians(res):
    """{job: {"wall", "client", "daemon", "cpu", "runs"}} medians over runs from the results TSV."""
    rows = {}
    for line in open(res):
        job, run, wall, client, daemon, _cmd = line.rstrip("\n").split("\t", 5)
        r = rows.setdefault(job, {"wall": [], "client": [], "daemon": []})
        r["wall"].append(float(wall))
        r["client"].append(float(client))
        r["daemon"].append(float(daemon))
    med = statistics.median
    out = {}
    for job, r in rows.items():
        c, d = med(r["client"]), med(r["daemon"])
        out[job] = {"wall": med(r["wall"]), "client": c, "daemon": d, "cpu": c + d,
                    "runs": len(r["wall"])}
    return out


def apply_model(extents_json, object_size, iops_4k, bw_seq):
    """Seconds to write a change set on the standby's OSD, from rbd bench rates of the same run.

    One write of len bytes costs max(1/iops_4k, len/bw_seq). Per object the extents are either
    written as they are (sum of their costs) or coalesced into one write spanning first..last
    changed byte (one cost). Returns (as_is, all_coalesced, per_object_min, objects, extents)."""
    ext = json.load(open(extents_json))
    per_obj = {}
    for e in ext:
        off, ln = int(e["offset"]), int(e["length"])
        per_obj.setdefault(off // object_size, []).append((off, ln))
    cost = lambda ln: max(1.0 / iops_4k, ln / bw_seq)  # noqa: E731
    as_is = whole = best = 0.0
    for lst in per_obj.values():
        a = sum(cost(ln) for _, ln in lst)
        w = cost(max(o + ln for o, ln in lst) - min(o for o, _ in lst))
        as_is += a
        whole += w
        best += min(a, w)
    return as_is, whole, best, len(per_obj), len(ext)


# Job names shared with lib-ceph.sh / rbd-bench.sh (the report finds the jobs by these names).
FULL_PEERS = ["full: export-diff | import-diff", "full: same with zstd -1 / zstd -d",
              "rbd-mirror snapshot: full (enable → standby snapshot complete)",
              "rbd-mirror journal: full (feature enable → marker on standby)"]
INCR_PEERS = ["incr: export-diff | import-diff", "incr: same with zstd -1 / zstd -d",
              "rbd-mirror snapshot: incr (mirror snapshot → complete)",
              "rbd-mirror journal: incr (last write → marker on standby)"]
READ_FULL = "read ceiling: export-diff full > /dev/null"
READ_INCR = "read ceiling: export-diff incr > /dev/null"
WRITE_FULL = "write ceiling: rbd import (to site-b)"


def ferry_job(phase, gap):
    return f"ferry: {phase} sync (coalesce_gap {gap})"


def rbdreport(res, wire_tsv, bench_txt, meta_json):
    """The ferry-vs-peers report of rbd-bench.sh (markdown on stdout)."""
    meta = json.load(open(meta_json))
    jm = job_medians(res)
    med = statistics.median
    gaps = meta["gaps"]
    ref = gaps[0]
    image_gb = meta["image_size"] / 1e9
    change_gb = meta["change_bytes"] / 1e9
    missing = []

    def get(job):
        if job not in jm:
            missing.append(job)
        return jm.get(job)

    def f2(x):
        return "–" if x is None else f"{x:.2f}"

    def table(title, ferry, peers, gb, gb_what):
        print(f"**{title}** (CPU = client + ferry agent + all lab daemons; "
              f"CPU-s/GB per GB of {gb_what}; ratios are peer / ferry, > 1 means ferry is better)")
        print()
        print("| job | wall s | wall peer/ferry | CPU-s | CPU peer/ferry | CPU-s/GB |")
        print("|---|---|---|---|---|---|")
        fm = get(ferry)
        for job in [ferry] + peers:
            r = get(job)
            if r is None:
                print(f"| {job.replace('|', chr(92) + '|')} | not run | | | | |")
                continue
            rw = r["wall"] / fm["wall"] if fm else None
            rc = r["cpu"] / fm["cpu"] if fm and fm["cpu"] > 0 else None
            print(f"| {job.replace('|', chr(92) + '|')} | {r['wall']:.2f} | {f2(rw)} | "
                  f"{r['cpu']:.2f} | {f2(rc)} | {r['cpu'] / gb:.2f} |")
        print()

    print(f"Image {meta['image_size'] >> 20} MiB ({meta['nonzero'] / 1e6:.0f} MB allocated), change set "
          f"{meta['change_count']} × 4 KiB writes = {meta['change_bytes'] / 1e6:.1f} MB of distinct "
          f"blocks ({meta['extents']} extents / {meta['diff_bytes'] / 1e6:.1f} MB in rbd diff). "
          f"ferry reference configuration: coalesce_gap {ref}. Medians of {meta['runs']} run(s).")
    print()
    table("Full sync", ferry_job("full", ref), FULL_PEERS, image_gb, "image")
    table("Incremental sync", ferry_job("incr", ref), INCR_PEERS, change_gb, "change set")

    # Wire bytes per gap.
    wire = {}
    for line in open(wire_tsv):
        gap, run, phase, path = line.rstrip("\n").split("\t")
        j = json.load(open(path))
        wire.setdefault((gap, phase), []).append(j)
    print("**ferry per coalesce_gap** (incremental; wire = `udp_bytes` of `ferry sync --json`, all "
          "QUIC overheads; link times are wire bytes at that rate, no RTT)")
    print()
    print("| coalesce_gap | full wall s | incr wall s | incr CPU-s | bytes_changed (ferry) | bytes_sent "
          "| udp_bytes | udp bytes / changed byte | at 100 Mbit/s | at 1 Gbit/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for gap in gaps:
        fj, ij = get(ferry_job("full", gap)), get(ferry_job("incr", gap))
        js = wire.get((gap, "incr"), [])
        if not js or fj is None or ij is None:
            print(f"| {gap} | not run | | | | | | | | |")
            continue
        udp = med(j["udp_bytes"] for j in js)
        print(f"| {gap} | {fj['wall']:.2f} | {ij['wall']:.2f} | {ij['cpu']:.2f} | "
              f"{med(j['bytes_changed'] for j in js):.0f} | {med(j['bytes_sent'] for j in js):.0f} | "
              f"{udp:.0f} | {udp / meta['change_bytes']:.3f} | {udp * 8 / 1e8:.1f} s | "
              f"{udp * 8 / 1e9:.2f} s |")
    empty = jm.get(f"ferry: no-change sync (coalesce_gap {ref})")
    if empty:
        print()
        print(f"A sync with nothing changed (fixed cost of a cycle) took {empty['wall']:.2f} s wall and "
              f"{empty['cpu']:.2f} CPU-s (daemons included); it is part of every ferry number above.")
    fjs = wire.get((ref, "full"), [])
    if fjs:
        udp = med(j["udp_bytes"] for j in fjs)
        print()
        print(f"Full sync wire (gap {ref}): {udp:.0f} udp bytes = {udp / meta['nonzero']:.3f} per "
              f"allocated byte ({udp * 8 / 1e8:.0f} s at 100 Mbit/s).")
    print()

    # Ceilings.
    br = bench_rows(bench_txt)
    bmed = {k: (med(v[0]), med(v[1]) * 2**20) for k, v in br.items()}
    rfull, rincr, wfull = get(READ_FULL), get(READ_INCR), get(WRITE_FULL)
    print("**Ceilings** (the lab's single OSD per site)")
    print()
    print("| ceiling | seconds | ferry / ceiling |")
    print("|---|---|---|")
    ff, fi = get(ferry_job("full", ref)), get(ferry_job("incr", ref))

    def crow(name, secs, fer):
        if secs is None:
            print(f"| {name} | not measured | |")
        else:
            print(f"| {name} | {secs:.2f} | {f2(fer['wall'] / secs if fer and secs > 0 else None)} |")

    crow("full, read: `rbd export-diff` > /dev/null", rfull and rfull["wall"], ff)
    crow("full, write: `rbd import` of the image", wfull and wfull["wall"], ff)
    for label, key in (("full, read: allocated bytes at `rbd bench` 4 MiB seq read", "4 MiB seq read"),
                       ("full, write: allocated bytes at `rbd bench` 4 MiB seq write", "4 MiB seq write")):
        crow(label, meta["nonzero"] / bmed[key][1] if key in bmed else None, ff)
    crow("incr, read: `rbd export-diff --from-snap` > /dev/null", rincr and rincr["wall"], fi)
    model = None
    if "4 KiB rand write" in bmed and "4 MiB seq write" in bmed:
        model = apply_model(meta["extents_json"], meta["object_size"], bmed["4 KiB rand write"][0],
                            bmed["4 MiB seq write"][1])
        as_is, whole, best, nobj, next_ = model
        crow(f"incr, apply as is: {next_} writes at `rbd bench` 4 KiB rand write IOPS", as_is, fi)
        crow(f"incr, apply coalesced: {nobj} objects, one write each (first..last changed byte)",
             whole, fi)
        crow("incr, apply cheaper per object (min of the two)", best, fi)
    print()

    # Targets.
    print("**Targets** (issue 3)")
    print()
    res_lines = []

    def target(ok, text):
        res_lines.append(("PASS" if ok else "MISS") if ok is not None else "N/A ")
        print(f"- {res_lines[-1]} {text}")

    if ff and rfull and wfull:
        ceil = max(rfull["wall"], wfull["wall"])
        target(ff["wall"] <= 1.2 * ceil, f"full sync {ff['wall']:.2f} s within 20 % of the larger "
               f"ceiling {ceil:.2f} s (≤ {1.2 * ceil:.2f} s)")
    else:
        target(None, "full sync vs ceilings: not measured")
    peers_f = [(j, jm[j]) for j in FULL_PEERS if j in jm]
    if ff and peers_f:
        best = min(peers_f, key=lambda x: x[1]["wall"])
        target(ff["wall"] < best[1]["wall"], f"full sync {ff['wall']:.2f} s faster than every peer "
               f"(best: {best[0]}, {best[1]['wall']:.2f} s)")
    else:
        target(None, "full sync vs peers: not measured")
    peers_i = [(j, jm[j]) for j in INCR_PEERS if j in jm]
    if fi and peers_i:
        best = min(peers_i, key=lambda x: x[1]["wall"])
        target(fi["wall"] * 1.5 <= best[1]["wall"], f"incremental {fi['wall']:.2f} s ≥ 1.5× faster "
               f"than the best peer ({best[0]}, {best[1]['wall']:.2f} s → ≤ {best[1]['wall'] / 1.5:.2f} s)")
    else:
        target(None, "incremental vs peers: not measured")
    if fi and model:
        target(fi["wall"] <= 1.2 * model[2], f"incremental {fi['wall']:.2f} s within 20 % of the cheaper "
               f"way to apply it ({model[2]:.2f} s → ≤ {1.2 * model[2]:.2f} s)")
    else:
        target(None, "incremental vs apply ceiling: not measured")
    for name, fer, peers, gb in (("full", ff, peers_f, image_gb), ("incremental", fi, peers_i, change_gb)):
        if fer and peers:
            low = min(peers, key=lambda x: x[1]["cpu"])
            target(fer["cpu"] < low[1]["cpu"], f"{name} CPU-s/GB {fer['cpu'] / gb:.2f} lower than every "
                   f"peer's (lowest: {low[0]}, {low[1]['cpu'] / gb:.2f})")
        else:
            target(None, f"{name} CPU-s/GB vs peers: not measured")
    if missing:
        print()
        print(f"Jobs not measured in this run: {', '.join(sorted(set(missing)))}. The peer targets "
              f"above compare with the {len(peers_f)} full / {len(peers_i)} incremental peers that "
              f"ran, out of {len(FULL_PEERS)} / {len(INCR_PEERS)}.")
    print()
    partial = " (incomplete: not every peer ran)" if missing else ""
    print(f"Summary: {res_lines.count('PASS')} PASS, {res_lines.count('MISS')} MISS, "
          f"{sum(1 for x in res_lines if x.startswith('N/A'))} not measured{partial}.")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gen":
        gen(args[0], int(args[1]), int(args[2]))
    elif cmd == "delta":
        delta(args[0], args[1], int(args[2]), int(args[3]) if len(args) > 3 else 32768)
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
    elif cmd == "write-md":
        write_md(args[0], args[1], args[2])
    elif cmd == "rbdreport":
        rbdreport(args[0], args[1], args[2], args[3])
    elif cmd == "rss":
        print(f"{rss(args[0]):.0f}")
    else:
        sys.exit(f"unknown helper command {cmd}")
