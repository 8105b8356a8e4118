#!/usr/bin/env python3
"""Capacity model of a many-agent ferry site (docs/scale.md): control-store load, lease load,
takeover time after an agent's death, and how the placement plan balances bytes/s.

    python3 benches/scale_model.py [--agents 100] [--images 10000] [--groups 2000] [--seed 1]

Inputs are the figures measured on the lab by benches/control-ops.sh (control ops per operation,
bytes per control row) and the lease rules of agent/src/placement/lease.rs (30 s lease renewed at a
third, claims retried every 2 s). The placement part runs the plan's rule (agent/src/placement/
plan.rs: free groups largest rate first, each to the least-loaded live agent by bytes/s, then group
count, then name) on a simulated site; the takeover part simulates agent deaths at random instants
of the lease cycle. Assumed figures (not measured here) are flagged in the output. Deterministic
for a given --seed.
"""

import argparse
import heapq
import math
import random
import statistics

# Measured on the lab (benches/control-ops.sh, 2026-12-07; see docs/scale.md).
OPS_PER_OPERATION = {"reads": 8.0, "writes": 4.9}  # a manual recovery point made or deleted
IDLE_OPS_PER_AGENT_S = 0.35  # an agent paired, no group: version checks (0.18-0.35 measured)
CYCLE_OPS = 0.0  # a replication cycle writes nothing to the control store (0 writes in 20 cycles)
ROW_BYTES = {  # value bytes per row, by table (recovery points and policies: assumed, no row left)
    "protection_groups": 282,
    "resources": 175,
    "recovery_points": 250,
    "operations": 477,
    "services": 222,
    "policies": 200,
}
OMAP_PAGE = 1024  # rows per omap read (engine/src/sys/librados/omap.rs PAGE)
ROWS_PER_WRITE = 3  # rows one control write changes (2-3 seen in the lab's change logs)

# The lease (agent/src/placement/lease.rs LeaseTimes::DEFAULT).
LEASE_S = 30.0
RENEW_EVERY_S = LEASE_S * 0.333
SAFETY_S = 5.0
RETRY_S = 2.0

# Assumptions (flagged in the output): round trips and service rates of a production cluster.
RTT_MS = 1.0  # client to OSD round trip
NOTIFY_MS = 5.0  # a notify acknowledged by every live watcher (100 agents)
BLOCKLIST_S = 1.0  # one monitor commit (`osd blocklist add`); ~0.3-1 s on the lab
RESUME_S = 2.0  # a taken-over group's first cycle start: open images, handshake, resume query
OSD_OMAP_READ_MB_S = 200.0  # what one OSD serves of one object's omap (one PG, one primary)


def rows(groups, images, rps_per_group, ops_kept):
    return {
        "protection_groups": groups,
        "resources": images,
        "recovery_points": groups * rps_per_group,
        "operations": ops_kept,
        "services": 1,
        "policies": 10,
    }


def control_load(agents, groups, images, rp_per_group_per_h, rps_per_group, ops_kept):
    """Writes/s, the single write lock's busy share, and the reload traffic they cause."""
    table_rows = rows(groups, images, rps_per_group, ops_kept)
    state_rows = sum(table_rows.values())
    state_bytes = sum(n * ROW_BYTES[t] for t, n in table_rows.items())
    # A policy point is made and (retention full) the oldest one deleted: two operations.
    operations_s = groups * rp_per_group_per_h * 2 / 3600.0
    writes_s = operations_s * OPS_PER_OPERATION["writes"]
    reads_s = operations_s * OPS_PER_OPERATION["reads"]
    # One write: lock, version read, guarded write, unlock (4 round trips), then the notify.
    lock_hold_ms = 4 * RTT_MS + NOTIFY_MS
    lock_busy = writes_s * lock_hold_ms / 1000.0
    # Every other agent catches up once per notified write: before bf2ed85 by
    # reloading the whole state; since, from the change log (a version read,
    # the change list, the changed rows: three reads of a few rows).
    full_ops_s = writes_s * (agents - 1) * (1 + math.ceil(state_rows / OMAP_PAGE))
    full_mb_s = writes_s * (agents - 1) * state_bytes / 1e6
    row = max(ROW_BYTES.values())
    reload_ops_s = writes_s * (agents - 1) * 3
    reload_mb_s = writes_s * (agents - 1) * ROWS_PER_WRITE * (row + 40) / 1e6
    idle_ops_s = agents * IDLE_OPS_PER_AGENT_S
    return {
        "state_rows": state_rows,
        "state_mb": state_bytes / 1e6,
        "operations_s": operations_s,
        "writes_s": writes_s,
        "lock_busy": lock_busy,
        "control_ops_s": writes_s + reads_s + reload_ops_s + idle_ops_s,
        "reload_mb_s": reload_mb_s,
        "full_ops_s": writes_s + reads_s + full_ops_s + idle_ops_s,
        "full_mb_s": full_mb_s,
    }


ROUND_S = max(LEASE_S / 10, 1.0)  # agent/src/orchestrator/placement_round.rs: every lease retry


def lease_load(groups, agents):
    renew_s = groups / RENEW_EVERY_S
    # Each agent's placement round: its presence write (with the groups it
    # drives) and one read of every agent's record (83a2b86; before it, one
    # lock-holder read per group of the site as well).
    round_ops_s = agents * 2 / ROUND_S
    round_ops_before_s = agents * (2 + groups) / ROUND_S
    return {"renewals_s": renew_s, "per_agent_s": renew_s / agents, "round_ops_s": round_ops_s,
            "round_ops_before_s": round_ops_before_s}


CYCLE_EVERY_S = 5.0  # a busy group's continuous cycle cadence (assumed)
SOURCE_SAVES_PER_CYCLE = 3  # capture, cycle start, commit: each mirrored to the lease object
STANDBY_WRITES_PER_CYCLE = 3  # a durable sync's record, the commit's intent and record


def state_load(images):
    """Writes/s of the per-image replication state a shared-store site keeps in RADOS."""
    cycles_s = images / CYCLE_EVERY_S
    return {
        "source_writes_s": cycles_s * SOURCE_SAVES_PER_CYCLE,  # spread over the groups' lease objects
        "standby_writes_s": cycles_s * STANDBY_WRITES_PER_CYCLE,  # one object per image
    }


def takeover_times(samples, rng):
    """Seconds from an agent's death to its group being driven again."""
    out = []
    for _ in range(samples):
        since_renewal = rng.uniform(0, RENEW_EVERY_S)  # the last renewal got through this long ago
        expires_in = LEASE_S - since_renewal
        # Contenders poll every RETRY_S from an arbitrary phase; the first poll after expiry wins.
        phase = rng.uniform(0, RETRY_S)
        claim = expires_in + ((phase - expires_in) % RETRY_S)
        out.append(claim + RTT_MS * 3 / 1000.0 + BLOCKLIST_S + RESUME_S)
    out.sort()
    return out


def pct(values, p):
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def place(rates, agents, holders=None):
    """The plan's rule: free groups largest rate first, each to the least-loaded agent."""
    holders = dict(holders or {})
    load = {a: [0, 0] for a in agents}  # bytes/s, groups
    for g, a in holders.items():
        if a in load:
            load[a][0] += rates[g]
            load[a][1] += 1
    free = sorted((g for g in rates if holders.get(g) not in load), key=lambda g: (-rates[g], g))
    heap = [(load[a][0], load[a][1], a) for a in agents]
    heapq.heapify(heap)
    for g in free:
        b, n, a = heapq.heappop(heap)
        holders[g] = a
        heapq.heappush(heap, (b + rates[g], n + 1, a))
    return holders


def balance(rates, holders, agents):
    loads = {a: 0 for a in agents}
    counts = {a: 0 for a in agents}
    for g, a in holders.items():
        loads[a] += rates[g]
        counts[a] += 1
    mean = statistics.mean(loads.values())
    return max(loads.values()) / mean, max(counts.values()), min(counts.values())


def by_count(rates, agents):
    """The naive alternative: groups dealt round-robin by count."""
    return {g: agents[i % len(agents)] for i, g in enumerate(sorted(rates))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--groups", type=int, default=2000)
    ap.add_argument("--rp-per-hour", type=float, default=1.0, help="policy points per group and hour")
    ap.add_argument("--rps-kept", type=int, default=29, help="points kept per group (24 + 5 manual)")
    ap.add_argument("--ops-kept", type=int, default=2000, help="operation journal rows kept")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    print(f"site: {args.agents} agents, {args.images} images in {args.groups} groups; "
          f"{args.rp_per_hour} policy point/group/h, {args.rps_kept} points kept per group\n")
    c = control_load(args.agents, args.groups, args.images, args.rp_per_hour, args.rps_kept,
                     args.ops_kept)
    lease = lease_load(args.groups, args.agents)
    print("control store (one object, `ferry.control`):")
    print(f"  state: {c['state_rows']} rows, {c['state_mb']:.1f} MB")
    print(f"  operations {c['operations_s']:.2f}/s -> writes {c['writes_s']:.2f}/s; "
          f"write lock busy {100 * c['lock_busy']:.1f} % (assumed RTT {RTT_MS} ms, notify {NOTIFY_MS} ms)")
    for label, ops, mb in (("catch-up from the change log", c["control_ops_s"], c["reload_mb_s"]),
                           ("full reloads (before bf2ed85)", c["full_ops_s"], c["full_mb_s"])):
        print(f"  {label}: RADOS ops {ops:.0f}/s, catch-up traffic {mb:.1f} MB/s off one OSD "
              f"(assumed budget {OSD_OMAP_READ_MB_S:.0f} MB/s: "
              f"{'OVER' if mb > OSD_OMAP_READ_MB_S else 'within'})")
    print(f"leases: {lease['renewals_s']:.0f} renewals/s site-wide (one cls_lock op each, spread "
          f"over {args.groups} objects), {lease['per_agent_s']:.1f}/s per agent")
    print(f"placement rounds: {lease['round_ops_s']:.0f} ops/s site-wide, every {ROUND_S:.0f} s a "
          f"presence write and one read per agent ({lease['round_ops_before_s']:.0f} ops/s when every "
          f"round read every group's lock, before 83a2b86)")
    st = state_load(args.images)
    print(f"replication state in RADOS (cycles every {CYCLE_EVERY_S:.0f} s, assumed): primaries' source "
          f"states {st['source_writes_s']:.0f} writes/s over {args.groups} lease objects; the standby's "
          f"records {st['standby_writes_s']:.0f} writes/s over {args.images} per-image objects\n")

    t = takeover_times(20000, rng)
    print(f"takeover after an agent's death (lease {LEASE_S:.0f} s renewed every {RENEW_EVERY_S:.0f} s, "
          f"retry {RETRY_S:.0f} s, assumed blocklist {BLOCKLIST_S} s + resume {RESUME_S} s):")
    print(f"  p50 {pct(t, 50):.1f} s, p99 {pct(t, 99):.1f} s, max {t[-1]:.1f} s "
          f"(bound: lease + retry + blocklist + resume = {LEASE_S + RETRY_S + BLOCKLIST_S + RESUME_S:.1f} s)\n")

    agents = [f"agent-{i:03}" for i in range(args.agents)]
    # Group rates: lognormal around 2 MB/s (a few groups hundreds of times busier than most).
    rates = {f"g{i:05}": int(rng.lognormvariate(math.log(2e6), 1.2)) for i in range(args.groups)}
    plan = place(rates, agents)
    naive = by_count(rates, agents)
    pb, pmax, pmin = balance(rates, plan, agents)
    nb, nmax, nmin = balance(rates, naive, agents)
    print("placement of the groups' bytes/s (lognormal rates, sigma 1.2):")
    print(f"  the plan (bytes first): busiest agent {pb:.3f} x the mean; groups per agent {pmin}-{pmax}")
    print(f"  round-robin by count:   busiest agent {nb:.3f} x the mean; groups per agent {nmin}-{nmax}")
    mean = sum(rates.values()) / len(agents)
    print(f"  (no placement can do better than {max(max(rates.values()), mean) / mean:.3f} x: "
          f"the largest group alone is {max(rates.values()) / mean:.2f} x an agent's mean)")
    by_load = sorted(agents, key=lambda a: sum(rates[g] for g in plan if plan[g] == a))
    for label, dead in (("a median agent", by_load[len(by_load) // 2]), ("the busiest agent", by_load[-1])):
        alive = [a for a in agents if a != dead]
        after = place(rates, alive, {g: a for g, a in plan.items() if a != dead})
        ab, amax, amin = balance(rates, after, alive)
        moved = sum(1 for g in plan if plan[g] == dead)
        kept = all(after[g] == plan[g] for g in plan if plan[g] != dead)
        print(f"  after {label} dies: its {moved} groups re-placed, busiest {ab:.3f} x the mean; "
              f"groups per agent {amin}-{amax}; other groups moved: {'none' if kept else 'SOME'}")
    print()

    print("where the single control object breaks: catch-up MB/s off its OSD (assumed budget "
          f"{OSD_OMAP_READ_MB_S:.0f} MB/s), by agents and groups (5 images per group), "
          "change log / full reloads:")
    sizes = (12, 100, 500, 2000, 10000)
    print("  agents \\ groups " + "".join(f"{g:>18}" for g in sizes))
    for n in (5, 25, 100, 400):
        cells = []
        for g in sizes:
            cc = control_load(n, g, 5 * g, args.rp_per_hour, args.rps_kept, min(args.ops_kept, 10 * g))
            marks = ["!" if v > OSD_OMAP_READ_MB_S else " " for v in (cc["reload_mb_s"], cc["full_mb_s"])]
            cells.append(f"{cc['reload_mb_s']:7.1f}{marks[0]}/{cc['full_mb_s']:8.1f}{marks[1]}")
        print(f"  {n:16d} " + "".join(cells))
    print("  (! = over the budget)")
    for n in (100, 400):
        cc = control_load(n, 2000, 10000, args.rp_per_hour, args.rps_kept, args.ops_kept)
        print(f"  write lock at {n} agents, 2,000 groups: {100 * cc['lock_busy']:.1f} % busy; "
              f"notify fan-out {cc['writes_s'] * (n - 1):.0f} deliveries/s")

if __name__ == "__main__":
    main()
