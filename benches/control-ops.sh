#!/usr/bin/env bash
# control-ops.sh — RADOS operations ferry's shared control store (`[control] store = "rados"`)
# costs, measured on the two-site Ceph lab: the input of docs/scale.md's capacity model.
#
#   benches/control-ops.sh [--seconds S] [--rate MBPS]
#
# A primary agent on site-a keeps its control state in a pool of its own (ferry-ctlops,
# namespace bench, created and removed here), so the pool's op counters (`rados df`) count
# exactly the control store's requests. It is paired with a standby agent on site-b (RBD
# backend) and protects one group of one 256 MiB RBD image (ctlops-0, site-a pool rbd) with
# continuous replication. Three phases of S seconds each (default 60), counted from `rados df`
# before and after each and from the group's progress (`ferry status --json`: committed cycles
# and idle checks):
#   1. paired, no group: the agent's own background cost (watch pings, service checks);
#   2. the group replicating, nothing written: cost per idle check;
#   3. a rate-paced writer (4 KiB random writes, --rate MB/s, default 2): cost per committed cycle;
#   4. four manual recovery points made and deleted (`ferry rp create|delete --wait`): cost per operation,
#      and the size of the control object (omap keys) at the end.
# Prints one table (ops per phase, per second, per cycle or check) for docs/scale.md.
#
# Environment: FERRY_BIN_DIR (default target/release), FERRY_CTLOPS_PORT (standby UDP port,
# default 47593; the primary takes the next). Run as root with the lab up; only the pool
# ferry-ctlops and images named ctlops-* are created and removed.
set -euo pipefail

# shellcheck source=benches/lib-ceph.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-ceph.sh"
REPO="$CEPH_LIB_REPO"
SECS=60
RATE=2
while (($#)); do
  case "$1" in
    --seconds) SECS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    *) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
BIN="${FERRY_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}"
FERRY="$BIN/ferry"
FAGENT="$BIN/ferry-agent"
PORT="${FERRY_CTLOPS_PORT:-47593}"
POOL=ferry-ctlops
NS=bench
IMG_SIZE=0
SEED=0
ceph_lib_init "$(mktemp -d /tmp/ferry-ctlops.XXXXXX)"
FA="$WORK/a"
FB="$WORK/b"
PIDS=()

on_exit() {
  local rc=$? p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  cleanup_images ctlops- || log "cleanup of ctlops-* images failed"
  ceph --cluster "$A" osd pool rm "$POOL" "$POOL" --yes-i-really-really-mean-it >/dev/null 2>&1 ||
    log "could not remove pool $POOL"
  rm -rf "$WORK"
  exit "$rc"
}
trap on_exit EXIT

start_agent() {
  local dir="$1" listen="$2" i pid
  "$FAGENT" run --dir "$dir" --listen "$listen" --api-listen 127.0.0.1:0 >"$dir/agent.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  for ((i = 0; i < 300; i++)); do
    grep -qs 'ferry-agent ready' "$dir/agent.log" && return 0
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$dir/agent.log" >&2; die "agent in $dir exited"; }
    sleep 0.1
  done
  die "agent in $dir not ready after 30 s"
}

# pool_ops: "READ_OPS WRITE_OPS" of the control pool so far.
pool_ops() {
  rados --cluster "$A" df --format json |
    jq -r --arg p "$POOL" '.pools[] | select(.name == $p) | "\(.read_ops) \(.write_ops)"'
}

# progress FIELD: the group's live progress field on the primary.
progress() {
  "$FERRY" --dir "$FA" status --json |
    jq -r --arg f "$1" '.groups[] | select(.name == "ctlops") | .progress[$f] // 0'
}

# phase NAME UNIT: measures S seconds; prints a table row. UNIT: none, idle_checks or cycles.
phase() {
  local name="$1" unit="$2" r0 w0 r1 w1 u0=0 u1=0 ops per
  read -r r0 w0 < <(pool_ops)
  [[ $unit == none ]] || u0=$(progress "$unit")
  sleep "$SECS"
  read -r r1 w1 < <(pool_ops)
  [[ $unit == none ]] || u1=$(progress "$unit")
  ops=$(((r1 - r0) + (w1 - w0)))
  per="—"
  if [[ $unit != none ]] && ((u1 > u0)); then
    per=$(awk -v o="$ops" -v n="$((u1 - u0))" 'BEGIN { printf "%.1f (%d %s)", o / n, n, "'"$unit"'" }')
  fi
  printf '| %s | %d | %d | %.2f | %s |\n' "$name" "$((r1 - r0))" "$((w1 - w0))" \
    "$(awk -v o="$ops" -v s="$SECS" 'BEGIN { print o / s }')" "$per"
}

log "pool $POOL on $A for the control store; ${SECS}s per phase; writer ${RATE} MB/s"
ceph --cluster "$A" osd pool create "$POOL" 8 8 replicated >/dev/null
ceph --cluster "$A" osd pool set "$POOL" size 1 --yes-i-really-mean-it >/dev/null 2>&1 || true
ceph --cluster "$A" osd pool application enable "$POOL" ferry >/dev/null
cleanup_images ctlops-
ra create "rbd/ctlops-0" --size 256M --image-feature layering,exclusive-lock,object-map,fast-diff
"$FAGENT" init --dir "$FA" >/dev/null
"$FAGENT" init --dir "$FB" >/dev/null
printf '[control]\nstore = "rados"\npool = "%s"\nnamespace = "%s"\n[ceph]\ncluster = "%s"\n' \
  "$POOL" "$NS" "$A" >"$FA/config.toml"
printf '[standby]\nbackend = "rbd"\nrbd_pool = "rbd"\n[ceph]\ncluster = "%s"\n' "$B" >"$FB/config.toml"
start_agent "$FB" "127.0.0.1:$PORT"
start_agent "$FA" "127.0.0.1:$((PORT + 1))"
KEY=$("$FERRY" --dir "$FB" service key)
"$FERRY" --dir "$FA" service create --key "$KEY" --name ctlops >/dev/null

echo "Run $(date -u +%Y-%m-%dT%H:%MZ), ferry $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?'), ${SECS} s per phase"
echo
echo "| phase | read ops | write ops | ops/s | ops per cycle or check |"
echo "|---|---:|---:|---:|---:|"
phase "paired, no group" none
"$FERRY" --dir "$FA" group create ctlops --wait >/dev/null
"$FERRY" --dir "$FA" group add ctlops "rbd:rbd/ctlops-0" --wait >/dev/null
"$FERRY" --dir "$FA" group start ctlops --wait >/dev/null
for ((i = 0; i < 600; i++)); do
  (($(progress idle_checks) > 1)) && break
  sleep 0.5
done
phase "group replicating, nothing written" idle_checks
/usr/bin/python3 "$REPO/benches/rpo_bench.py" write "$A" "$((RATE * 1000000))" "$((SECS + 10))" 7 \
  "$WORK/writer.json" ctlops-0 >/dev/null 2>&1 &
PIDS+=("$!")
sleep 5
phase "group replicating, writer at ${RATE} MB/s" cycles

# 4. Operator operations: manual recovery points made and deleted, one after the other (a group
# holds at most 5 manual points).
RPS=4
read -r r0 w0 < <(pool_ops)
for ((i = 0; i < RPS; i++)); do
  "$FERRY" --dir "$FA" rp create ctlops --name "ctlops-rp-$i" --wait >/dev/null
done
for ((i = 0; i < RPS; i++)); do
  "$FERRY" --dir "$FA" rp delete ctlops "ctlops-rp-$i" --wait >/dev/null
done
RPS=$((RPS * 2))
read -r r1 w1 < <(pool_ops)
printf '| %d operations: 4 manual recovery points made, then deleted (--wait) | %d | %d | — | %.1f per operation |\n' "$RPS" \
  "$((r1 - r0))" "$((w1 - w0))" "$(awk -v o="$(((r1 - r0) + (w1 - w0)))" -v n="$RPS" 'BEGIN { print o / n }')"
echo
echo "The control object after the run, rows per table and their value bytes (rados listomapvals):"
echo
echo "| table | rows | value bytes | bytes per row |"
echo "|---|---:|---:|---:|"
rados --cluster "$A" -p "$POOL" -N "$NS" listomapvals ferry.control |
  awk '/^[^ \t]/ && !/^value/ { key = $1 } /^value \(/ { n = $2; gsub(/\(/, "", n);
         split(key, part, "/"); t = (part[1] == "t") ? part[2] : key; rows[t]++; bytes[t] += n }
       END { for (t in rows) printf "| %s | %d | %d | %.0f |\n", t, rows[t], bytes[t], bytes[t] / rows[t] }' | sort
