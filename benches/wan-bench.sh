#!/usr/bin/env bash
# wan-bench.sh — ferry's full and incremental sync through an emulated WAN: a 20 ms round trip
# (delay only, from benches' order-preserving UDP delay line, ferry-udp-proxy) and a 1 Gbit/s
# `tc tbf` limit in a network namespace, for a file source and an RBD source. Prints goodput
# (image bytes per wall second, so the compression gain counts), the QUIC wire bytes, wire bytes
# per changed byte, which compression mode `[transport] compression = auto` ended in (and whether
# the link was the bottleneck then: RBD sources send no bridged gap bytes while it is), and
# PASS/MISS for: full sync ≥ 90 % of the link rate in goodput; incremental wire bytes ≤ 1.1 ×
# changed bytes. See benches/BENCHMARKING.md.
#
#   benches/wan-bench.sh [--sources "file rbd"] [--rtt-ms 20] [--rate 1gbit]
#   (also: benches/rbd-bench.sh --wan [same options])
#
# Topology (host = the lab's namespace, where both agents and Ceph live; N = a namespace made
# for the run and removed at exit):
#   ferry sync (host) → 10.77.1.2:PP [veth fwan-a, tbf RATE both ways] ferry-udp-proxy in N
#   (RTT/2 each way) → 10.77.2.1:PORT [veth fwan-b, unshaped] standby ferry-agent (host).
# The shaped veth carries the sync's data one way and the acknowledgements the other, like a
# full-duplex link; the proxy's round trip is checked with a UDP echo before the standby starts.
#
# Environment: FERRY_WAN_SIZE (image, default 2G: the rbd-bench data set, cached), FERRY_WAN_CHANGE
# (seeded 4 KiB writes, default 128M), FERRY_WAN_COALESCE_GAP (the primary's [ceph] coalesce_gap,
# e.g. 0; default: not set), FERRY_WAN_PORT (standby, default 47495; the proxy takes the
# next), FERRY_BIN_DIR (ferry, ferry-agent, ferry-udp-proxy), FERRY_BENCH_SEED,
# FERRY_CEPH_LAB_DIR, FERRY_BENCH_KEEP=1. Run as root; creates only images named wan-* and the
# namespace ferry-wan-<pid> with the veth pairs fwan-a0/fwan-b0 (all removed at exit).
# shellcheck disable=SC2016
set -euo pipefail

# shellcheck source=benches/lib-ceph.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib-ceph.sh"
REPO="$CEPH_LIB_REPO"
SOURCES="file rbd"
RTT_MS=20
RATE=1gbit
while (($#)); do
  case "$1" in
    --sources) SOURCES="$2"; shift 2 ;;
    --rtt-ms) RTT_MS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    *) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
IMG_SIZE=$(to_bytes "${FERRY_WAN_SIZE:-2G}")
CHANGE=$(to_bytes "${FERRY_WAN_CHANGE:-128M}")
DELTA_COUNT=$((CHANGE / 4096))
PORT="${FERRY_WAN_PORT:-47495}"
PPORT=$((PORT + 1))
BIN="${FERRY_BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}"
FERRY="$BIN/ferry"
FAGENT="$BIN/ferry-agent"
PROXY="$BIN/ferry-udp-proxy"
for b in "$FERRY" "$FAGENT" "$PROXY"; do
  [[ -x $b ]] || die "no $b (cargo build --release --bins -j 2, or set FERRY_BIN_DIR)"
done
case "$RATE" in
  *gbit) RATE_BPS=$((${RATE%gbit} * 1000000000)) ;;
  *mbit) RATE_BPS=$((${RATE%mbit} * 1000000)) ;;
  *) die "--rate must be Ngbit or Nmbit" ;;
esac
[[ $(id -u) -eq 0 ]] || die "run as root"
ceph_lib_init "$LAB_DIR/wan-bench"
NS="ferry-wan-$$"
HOST_A=10.77.1.1 NS_A=10.77.1.2 HOST_B=10.77.2.1 NS_B=10.77.2.2
PIDS=()
STANDBY_PID=""
PROXY_PID=""
FS="$WORK/ferry-s" # primary identity (ferry sync)
REPORT="$WORK/report.txt"

on_exit() {
  local rc=$? p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true # removes fwan-a1/fwan-b1, and with them fwan-a0/fwan-b0
  ip link del fwan-a0 2>/dev/null || true
  ip link del fwan-b0 2>/dev/null || true
  if [[ ${FERRY_BENCH_KEEP:-0} != 1 ]]; then
    cleanup_images wan- || log "cleanup of wan-* images failed"
    rm -f "$WORK/wan-src.img"
    rm -rf "$WORK/standby-file" "$WORK/standby-rbd"
  fi
  exit "$rc"
}
trap on_exit EXIT

# 1. The link ------------------------------------------------------------------------------------
if ip link show fwan-a0 >/dev/null 2>&1 || ip link show fwan-b0 >/dev/null 2>&1; then
  die "veth fwan-a0/fwan-b0 exists already (another wan-bench.sh running?)"
fi
ip netns add "$NS"
ip link add fwan-a0 type veth peer name fwan-a1 netns "$NS"
ip link add fwan-b0 type veth peer name fwan-b1 netns "$NS"
ip addr add "$HOST_A/30" dev fwan-a0
ip addr add "$HOST_B/30" dev fwan-b0
ip link set fwan-a0 up
ip link set fwan-b0 up
ip -n "$NS" addr add "$NS_A/30" dev fwan-a1
ip -n "$NS" addr add "$NS_B/30" dev fwan-b1
ip -n "$NS" link set lo up
ip -n "$NS" link set fwan-a1 up
ip -n "$NS" link set fwan-b1 up
# burst ≥ rate / HZ (1 Gbit/s at HZ 250: 500 KB); the queue holds ~25 ms at the rate.
tc qdisc add dev fwan-a0 root tbf rate "$RATE" burst 1mb latency 25ms
ip netns exec "$NS" tc qdisc add dev fwan-a1 root tbf rate "$RATE" burst 1mb latency 25ms
log "namespace $NS: $HOST_A <-> $NS_A (tbf $RATE both ways), $NS_B <-> $HOST_B; proxy delay $((RTT_MS / 2)) ms each way"

start_proxy() {
  ip netns exec "$NS" "$PROXY" --listen "$NS_A:$PPORT" --target "$HOST_B:$PORT" --upstream-bind "$NS_B" \
    --delay-ms "$(awk -v r="$RTT_MS" 'BEGIN { print r / 2 }')" >"$WORK/proxy.out" 2>"$WORK/proxy.err" &
  PROXY_PID=$!
  PIDS+=("$PROXY_PID")
  for ((i = 0; i < 100; i++)); do
    grep -qs '^ready' "$WORK/proxy.out" && return 0
    sleep 0.05
  done
  die "ferry-udp-proxy did not start: $(cat "$WORK/proxy.err")"
}
start_proxy

# The round trip through the proxy, against a UDP echo on the standby's address and port.
RTT_CHECK=$("$PY" - "$HOST_B" "$PORT" "$NS_A" "$PPORT" <<'EOF'
import socket, statistics, sys, threading, time
hb, port, ns_a, pport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); echo.bind((hb, port)); echo.settimeout(5)
def serve():
    for _ in range(20):
        try:
            d, a = echo.recvfrom(2048)
        except OSError:
            return
        echo.sendto(d, a)
threading.Thread(target=serve, daemon=True).start()
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.settimeout(2)
rtts = []
for i in range(20):
    t = time.monotonic(); c.sendto(b"x" * 1200, (ns_a, pport)); c.recvfrom(2048)
    rtts.append((time.monotonic() - t) * 1000)
print(f"{statistics.median(rtts):.2f} {min(rtts):.2f} {max(rtts):.2f}")
EOF
)
read -r RTT_MED RTT_MIN RTT_MAX <<<"$RTT_CHECK"
log "round trip through the proxy (UDP echo, 20 × 1200 B): median $RTT_MED ms (min $RTT_MIN, max $RTT_MAX)"
# A fresh proxy for ferry: no client state left from the echo.
kill "$PROXY_PID"
wait "$PROXY_PID" 2>/dev/null || true
start_proxy

# 2. Agents --------------------------------------------------------------------------------------
rm -rf "$FS"
FP_S=$("$FAGENT" init --dir "$FS" | tail -n 1)
printf '[ceph]\ncluster = "%s"\n' "$A" >"$FS/config.toml"
if [[ -n ${FERRY_WAN_COALESCE_GAP:-} ]]; then
  printf 'coalesce_gap = "%s"\n' "$FERRY_WAN_COALESCE_GAP" >>"$FS/config.toml"
fi
export FERRY FS FP_S PPORT NS_A

# start_standby KIND: a standby agent (files or rbd backend) on HOST_B:PORT; sets FP_B.
start_standby() {
  local kind="$1" dir="$WORK/standby-$1" i
  rm -rf "$dir"
  FP_B=$("$FAGENT" init --dir "$dir" | tail -n 1)
  if [[ $kind == rbd ]]; then
    printf '[standby]\nbackend = "rbd"\nrbd_pool = "rbd"\n[ceph]\ncluster = "%s"\n' "$B" >"$dir/config.toml"
  fi
  "$FAGENT" run --dir "$dir" --listen "$HOST_B:$PORT" --api-listen 127.0.0.1:0 --trust "$FP_S" >"$dir/agent.log" 2>&1 &
  STANDBY_PID=$!
  PIDS+=("$STANDBY_PID")
  for ((i = 0; i < 300; i++)); do
    grep -qs 'ferry-agent ready' "$dir/agent.log" && return 0
    sleep 0.1
  done
  die "standby agent ($kind) not ready"
}
stop_standby() {
  kill "$STANDBY_PID" 2>/dev/null || true
  wait "$STANDBY_PID" 2>/dev/null || true
}

# timed_sync SRC NAME OUT [ADDR]: `ferry sync` through the link (or straight to ADDR); prints its
# wall seconds.
timed_sync() {
  local t0 t1 addr="${4:-$NS_A:$PPORT}"
  t0=$(date +%s.%N)
  "$FERRY" sync --dir "$FS" "$1" "quic://$addr/$2" --peer "$FP_B" --json >"$3"
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

# check SRC NAME: `ferry verify` straight to the standby (not through the link) must exit 0.
check() {
  "$FERRY" verify --dir "$FS" "$1" "quic://$HOST_B:$PORT/$2" --peer "$FP_B" >/dev/null ||
    die "ferry verify: the standby of $1 differs from the source"
}

# tbf_stats: bytes sent so far by the shaped host → namespace direction, and its drops.
tbf_stats() { tc -s qdisc show dev fwan-a0 | awk '/Sent/ { b = $2 } /dropped/ { gsub(",", "", $7); d = $7 } END { print b, d }'; }

make_data
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
for src in $SOURCES; do
  case "$src" in
    file)
      start_standby files
      SRC="file:$WORK/wan-src.img"
      NAME=wan-file
      cp --sparse=always "$DATA" "$WORK/wan-src.img"
      ;;
    rbd)
      start_standby rbd
      SRC="rbd:rbd/wan-src"
      NAME=wan-rbd
      rm_img "$A" wan-src
      rm_img "$B" "$NAME"
      ra import --no-progress "$DATA" rbd/wan-src
      ;;
    *) die "unknown source $src (file or rbd)" ;;
  esac
  # Baseline: the same full sync straight to the standby (loopback-fast veth, no proxy, no tbf).
  log "$src: full sync without the link (baseline)"
  wall=$(timed_sync "$SRC" "$NAME-local" "$WORK/$src-local.json" "$HOST_B:$PORT")
  log "$src local full: ${wall}s $(jq -c '{bytes_sent, udp_bytes, compression, compressing_at_end, compression_switches}' "$WORK/$src-local.json")"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$src" "full, no link" "$wall" "$IMG_SIZE" 0 0 "$(jq -c . "$WORK/$src-local.json")" >>"$RESULTS"
  [[ $src == rbd ]] && rm_img "$B" "$NAME-local"
  for phase in full incr; do
    if [[ $phase == incr ]]; then
      if [[ $src == file ]]; then
        UNIQUE=$("$PY" - "$WORK/wan-src.img" "$SEED" "$DELTA_COUNT" <<'EOF'
import os, random, sys
path, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
fd = os.open(path, os.O_WRONLY)
blocks = os.fstat(fd).st_size // 4096
seen = set()
for _ in range(count):
    off = rng.randrange(blocks) * 4096
    seen.add(off)
    os.pwrite(fd, rng.randbytes(4096), off)
os.fsync(fd)
os.close(fd)
print(len(seen) * 4096)
EOF
)
      else
        read -r _ UNIQUE < <(h delta "$A" wan-src "$SEED" "$DELTA_COUNT")
      fi
    fi
    read -r tb0 td0 < <(tbf_stats)
    log "$src: $phase sync through the link"
    wall=$(timed_sync "$SRC" "$NAME" "$WORK/$src-$phase.json")
    read -r tb1 td1 < <(tbf_stats)
    check "$SRC" "$NAME"
    j="$WORK/$src-$phase.json"
    log "$src $phase: ${wall}s $(jq -c '{bytes_changed, bytes_plain_data, bytes_sent, udp_bytes, compression, compressing_at_end, compression_switches, link_bound_at_end, seconds}' "$j")"
    if [[ $phase == full ]]; then base=$IMG_SIZE; else base=$UNIQUE; fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$src" "$phase" "$wall" "$base" "$((tb1 - tb0))" "$((td1 - td0))" "$(jq -c . "$j")" >>"$RESULTS"
  done
  stop_standby
  if [[ $src == rbd ]]; then
    rm_img "$A" wan-src
    rm_img "$B" "$NAME"
  else
    rm -f "$WORK/wan-src.img"
  fi
done
kill "$PROXY_PID"
wait "$PROXY_PID" 2>/dev/null || true
PROXY_TOTALS=$(cat "$WORK/proxy.err")
# Datagrams the proxy's sockets dropped (receive buffer full) or could not send, in the namespace.
NS_UDP=$(ip netns exec "$NS" awk '/^Udp:/ { if (!h) { split($0, k); h = 1 } else { for (i = 2; i <= NF; i++) if (k[i] ~ /Errors$/) printf "%s=%s ", k[i], $i } }' /proc/net/snmp)

# 3. Report --------------------------------------------------------------------------------------
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ), ferry $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?') ($BIN);" \
    "link: tbf $RATE both ways + ferry-udp-proxy, round trip measured $RTT_MED ms (UDP echo median," \
    "min $RTT_MIN, max $RTT_MAX); image $((IMG_SIZE >> 20)) MiB $(cat "$DATA.composition.json")," \
    "change set $DELTA_COUNT × 4 KiB seeded random writes; load average $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  "$PY" - "$RESULTS" "$RATE_BPS" <<'EOF'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
rate = int(sys.argv[2]) / 8  # bytes/s
print("| source | sync | wall s | image bytes | goodput MB/s | of link | wire (udp) bytes | wire / changed | "
      "plain data → sent (zstd) | compression: mode, at end, switches; link at end | tbf bytes, drops |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
verdicts = []
local = {}
for src, phase, wall, base, tbf_b, tbf_d, js in rows:
    r, wall, base = json.loads(js), float(wall), int(base)
    good = base / wall
    udp = r.get("udp_bytes", 0)
    per = udp / base if base else float("nan")
    ratio = r["bytes_sent"] / r["bytes_plain_data"] if r.get("bytes_plain_data") else float("nan")
    link = {True: "bound", False: "free"}.get(r.get("link_bound_at_end"), "?")
    comp = f'{r.get("compression", "?")}, {"zstd" if r.get("compressing_at_end") else "off"}, {r.get("compression_switches", "?")}; link {link}'
    print(f"| {src} | {phase} | {wall:.2f} | {base} | {good / 1e6:.1f} | {good / rate:.0%} | {udp} | "
          f"{per:.3f} | {r.get('bytes_plain_data', 0)} → {r['bytes_sent']} ({ratio:.2f}) | {comp} | {tbf_b}, {tbf_d} |")
    if phase == "full, no link":
        local[src] = good
        continue
    if phase == "full":
        ok = good >= 0.9 * rate
        verdicts.append(f"{'PASS' if ok else 'MISS'} {src} full sync goodput ≥ 90 % of the link: "
                        f"{good / 1e6:.1f} MB/s = {good / rate:.0%} of {rate / 1e6:.0f} MB/s"
                        + (f" (without the link: {local[src] / 1e6:.1f} MB/s; link / no link "
                           f"{good / local[src]:.2f})" if src in local else ""))
    else:
        ok = per <= 1.1
        verdicts.append(f"{'PASS' if ok else 'MISS'} {src} incremental wire bytes ≤ 1.1 × changed bytes: "
                        f"{udp} / {base} = {per:.3f}")
print()
print("goodput = image bytes / wall (full: the image size; incr: the distinct changed bytes), so")
print("what compression and zero detection save counts; wire = QUIC's UDP bytes (udp_bytes of `ferry")
print("sync --json`), headers and acknowledgement-eliciting overheads included.")
print()
for v in verdicts:
    print(v)
EOF
  echo
  echo "ferry-udp-proxy $PROXY_TOTALS; UDP errors in the namespace: $NS_UDP"
} >"$REPORT"
cat "$REPORT"
