#!/usr/bin/env bash
# ceph-lab.sh — two independent single-host Ceph (Pacific, 16.2.x) clusters on loopback,
# "site-a" and "site-b", for ferry's integration tests and benchmarks against rbd-mirror.
#
#   scripts/ceph-lab.sh up                 install packages if missing, start both clusters
#   scripts/ceph-lab.sh down [--purge]     stop everything (rbd-mirror, osd, mgr, mon); --purge
#                                          also deletes the data dir and /etc/ceph/site-*.{conf,keyring}
#   scripts/ceph-lab.sh status             health + pids; exit 0 only when both are healthy
#   scripts/ceph-lab.sh mirror-up MODE     MODE = snapshot | journal: pool mirroring site-a -> site-b
#                                          (peer bootstrap create/import) + rbd-mirror for site-b
#   scripts/ceph-lab.sh mirror-down        stop rbd-mirror, remove peers, disable pool mirroring
#
# Environment: FERRY_CEPH_LAB_DIR (default /var/lib/ferry-ceph-lab), FERRY_CEPH_LAB_TIMEOUT
# (seconds to wait for health, default 180), FERRY_CEPH_LAB_OSD_SIZE (sparse bluestore file,
# default 16G: bluestore's allocator walks the whole device before it reuses freed space, so
# over a benchmark session each file grows to its full size; 2 × 16G stays inside a small
# disk, and the biggest lab job keeps under 8 GiB live per site). Must run as root. No TTY needed. See scripts/ceph-lab.md.
set -euo pipefail

LAB_DIR="${FERRY_CEPH_LAB_DIR:-/var/lib/ferry-ceph-lab}"
TIMEOUT="${FERRY_CEPH_LAB_TIMEOUT:-180}"
OSD_SIZE="${FERRY_CEPH_LAB_OSD_SIZE:-16G}"
SITES=(site-a site-b)
# jq parses the JSON output of ceph/rbd; it is not part of Ceph.
PACKAGES=(ceph-mon ceph-mgr ceph-osd ceph-common rbd-mirror librbd-dev librados-dev python3-rbd jq)
# Health checks that may be present while we still call a cluster usable. Empty by default:
# the configuration below silences the ones a one-OSD loopback lab always triggers
# (POOL_NO_REDUNDANCY, MON_DISK_LOW, AUTH_INSECURE_GLOBAL_ID_RECLAIM_ALLOWED, TOO_FEW_OSDS).
# RECENT_CRASH is accepted: a crash report from an earlier, killed run is not a health problem.
HARMLESS_WARNINGS="${FERRY_CEPH_LAB_HARMLESS:-RECENT_CRASH RECENT_MGR_MODULE_CRASH}"

log() { printf '[ceph-lab %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Per-site constants ---------------------------------------------------------------------
site_addr() { case "$1" in site-a) echo 127.0.10.1 ;; site-b) echo 127.0.20.1 ;; esac; }
site_id() { case "$1" in site-a) echo a ;; site-b) echo b ;; esac; }
site_port_min() { case "$1" in site-a) echo 6800 ;; site-b) echo 6900 ;; esac; }
site_dir() { echo "$LAB_DIR/$1"; }
site_conf() { echo "/etc/ceph/$1.conf"; }
site_admin_keyring() { echo "/etc/ceph/$1.client.admin.keyring"; }
pidfile() { echo "$(site_dir "$1")/run/$2.pid"; } # $2 = mon | mgr | osd | rbd-mirror

# Cluster CLI wrappers (bounded so a dead mon cannot hang us).
cph() { local s="$1"; shift; timeout 60 ceph --cluster "$s" --connect-timeout 15 "$@" </dev/null; }
rbdc() { local s="$1"; shift; timeout 120 rbd --cluster "$s" "$@" </dev/null; }

require_root() { [[ $(id -u) -eq 0 ]] || die "must run as root"; }

# Packages -------------------------------------------------------------------------------
install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then return 0; fi
  log "installing ${missing[*]} (apt-get update first)"
  local policy=/usr/sbin/policy-rc.d had_policy=0
  if [[ -e $policy ]]; then
    had_policy=1
    cp -a "$policy" "$LAB_DIR/policy-rc.d.saved"
  fi
  # Maintainer scripts must not start any daemon: there is no init here, and we run our own.
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
  } </dev/null >"$LAB_DIR/apt.log" 2>&1 || rc=$?
  if ((had_policy)); then mv -f "$LAB_DIR/policy-rc.d.saved" "$policy"; else rm -f "$policy"; fi
  if ((rc != 0)); then
    tail -n 30 "$LAB_DIR/apt.log" >&2
    die "package install failed (full log: $LAB_DIR/apt.log)"
  fi
  command -v ceph-mon >/dev/null || die "ceph-mon still missing after install"
  log "packages installed: $(ceph --version)"
}

# Processes ------------------------------------------------------------------------------
pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
read_pid() {
  local f
  f=$(pidfile "$1" "$2")
  if [[ -f $f ]]; then cat "$f"; fi
}

# Start one daemon in the foreground mode (-f), detached into its own session, and record its pid.
start_daemon() {
  local s="$1" kind="$2"; shift 2
  local pid
  pid=$(read_pid "$s" "$kind")
  if pid_alive "$pid"; then return 0; fi
  local out
  out="$(site_dir "$s")/log/$kind.out"
  setsid "$@" </dev/null >>"$out" 2>&1 &
  echo $! >"$(pidfile "$s" "$kind")"
  log "$s: started $kind (pid $!)"
}

stop_daemon() {
  local s="$1" kind="$2" pid i
  pid=$(read_pid "$s" "$kind")
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then
      log "$s: $kind (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
    fi
    log "$s: stopped $kind (pid $pid)"
  fi
  rm -f "$(pidfile "$s" "$kind")"
}

# Daemons of this lab that we have no pid file for (e.g. pid file lost): the exact binary name
# and our own "--cluster <site>" argument must both match, so nothing else is ever touched.
stray_pids() {
  local s="$1" exe pid
  for exe in rbd-mirror ceph-osd ceph-mgr ceph-mon; do
    for pid in $(pgrep -x "$exe" || true); do
      if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--cluster $s "; then
        echo "$pid"
      fi
    done
  done
}

# Configuration --------------------------------------------------------------------------
write_conf() {
  local s="$1" fsid="$2" addr dir id pmin
  addr=$(site_addr "$s"); dir=$(site_dir "$s"); id=$(site_id "$s"); pmin=$(site_port_min "$s")
  cat >"$(site_conf "$s")" <<EOF
# Written by ferry scripts/ceph-lab.sh; data under $dir. Removed by "ceph-lab.sh down --purge".
[global]
fsid = $fsid
mon_host = [v2:$addr:3300,v1:$addr:6789]
public_addr = $addr
cluster_addr = $addr
ms_bind_ipv6 = false
ms_bind_port_min = $pmin
ms_bind_port_max = $((pmin + 99))
run_dir = $dir/run
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
osd_pool_default_pg_num = 32
osd_crush_chooseleaf_type = 0
mon_data_avail_warn = 1
mon_data_avail_crit = 0
crash_dir = $dir/crash

[mon]
mon_data = $dir/mon/\$cluster-\$id
log_file = $dir/log/\$name.log
mgr_initial_modules = iostat

[mgr]
mgr_data = $dir/mgr/\$cluster-\$id
keyring = $dir/mgr/\$cluster-\$id/keyring
log_file = $dir/log/\$name.log

[osd]
osd_data = $dir/osd/\$cluster-\$id
keyring = $dir/osd/\$cluster-\$id/keyring
log_file = $dir/log/\$name.log
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $(numfmt --from=iec "$OSD_SIZE")
bluestore_block_db_create = false
bluestore_block_wal_create = false
osd_memory_target = 1073741824
osd_snap_trim_sleep_hdd = 0
osd_delete_sleep_hdd = 0
osd_recovery_sleep_hdd = 0
osd_scrub_sleep = 0

[client.rbd-mirror.$id]
keyring = $dir/rbd-mirror/keyring
log_file = $dir/log/\$name.log
EOF
}

# Create one cluster from nothing: mon, mgr, osd, pool "rbd".
bootstrap_site() {
  local s="$1" dir id addr fsid
  dir=$(site_dir "$s"); id=$(site_id "$s"); addr=$(site_addr "$s")
  fsid=$(cat /proc/sys/kernel/random/uuid)
  log "$s: creating cluster fsid $fsid on $addr"
  rm -rf "$dir"
  mkdir -p "$dir"/{run,log,crash,mon,mgr,osd,rbd-mirror,tmp}
  mkdir -p /etc/ceph
  write_conf "$s" "$fsid"

  local mon_dir="$dir/mon/$s-$id" tmp="$dir/tmp"
  ceph-authtool --create-keyring "$tmp/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$(site_admin_keyring "$s")" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$tmp/mon.keyring" --import-keyring "$(site_admin_keyring "$s")" >/dev/null
  monmaptool --create --fsid "$fsid" --addv "$id" "[v2:$addr:3300,v1:$addr:6789]" \
    "$tmp/monmap" >/dev/null
  mkdir -p "$mon_dir"
  ceph-mon --cluster "$s" --mkfs -i "$id" --monmap "$tmp/monmap" --keyring "$tmp/mon.keyring" \
    >"$dir/log/mon-mkfs.out" 2>&1 || { cat "$dir/log/mon-mkfs.out" >&2; die "$s: mon mkfs failed"; }
  touch "$mon_dir/done"
  start_daemon "$s" mon ceph-mon -f --cluster "$s" -i "$id"
  wait_for "$s" 60 "mon quorum" cph "$s" mon stat

  # mgr: only the iostat module is enabled (mgr_initial_modules); always-on modules stay.
  mkdir -p "$dir/mgr/$s-$id"
  cph "$s" auth get-or-create "mgr.$id" mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
    -o "$dir/mgr/$s-$id/keyring" >/dev/null
  start_daemon "$s" mgr ceph-mgr -f --cluster "$s" -i "$id"

  # osd.0 on a sparse bluestore file (bluestore_block_create); keyring written by ceph-authtool
  # because "ceph-osd --mkfs --key" does not write it.
  local uuid key osd_dir="$dir/osd/$s-0" osd_id
  uuid=$(cat /proc/sys/kernel/random/uuid)
  key=$(ceph-authtool --gen-print-key)
  osd_id=$(printf '{"cephx_secret": "%s"}' "$key" | timeout 60 ceph --cluster "$s" osd new "$uuid" -i -)
  [[ $osd_id == 0 ]] || die "$s: expected osd id 0, got '$osd_id'"
  mkdir -p "$osd_dir"
  ceph-authtool --create-keyring "$osd_dir/keyring" --name osd.0 --add-key "$key" >/dev/null
  ceph-osd --cluster "$s" -i 0 --mkfs --osd-uuid "$uuid" >"$dir/log/osd-mkfs.out" 2>&1 ||
    { tail -n 30 "$dir/log/osd-mkfs.out" >&2; die "$s: osd mkfs failed"; }
  start_daemon "$s" osd ceph-osd -f --cluster "$s" -i 0
  wait_for "$s" 90 "osd.0 up" osd_up "$s"

  cph "$s" osd pool create rbd 32 32 replicated >/dev/null
  cph "$s" osd pool set rbd size 1 --yes-i-really-mean-it >/dev/null
  cph "$s" osd pool set rbd min_size 1 >/dev/null
  rbdc "$s" pool init rbd
  rm -rf "$tmp"
  echo "$fsid" >"$dir/fsid"
  touch "$dir/bootstrapped"
  log "$s: bootstrapped"
}

osd_up() { [[ $(cph "$1" osd stat --format json | jq -r '.num_up_osds') == 1 ]]; }

# wait_for SITE SECONDS WHAT CMD... : retry CMD until it succeeds; on timeout show the logs' tails.
wait_for() {
  local s="$1" secs="$2" what="$3"; shift 3
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$s: timed out after ${secs}s waiting for $what"
      show_logs "$s"
      die "$s: $what not reached"
    fi
    sleep 1
  done
}

show_logs() {
  local s="$1" f
  for f in "$(site_dir "$s")"/log/*; do
    [[ -f $f ]] || continue
    printf '==== %s (last 15 lines) ====\n' "$f" >&2
    tail -n 15 "$f" >&2
  done
}

start_site() {
  local s="$1" id
  id=$(site_id "$s")
  start_daemon "$s" mon ceph-mon -f --cluster "$s" -i "$id"
  start_daemon "$s" mgr ceph-mgr -f --cluster "$s" -i "$id"
  start_daemon "$s" osd ceph-osd -f --cluster "$s" -i 0
}

# Health: 0 when HEALTH_OK or only checks listed in HARMLESS_WARNINGS; prints the summary.
site_health() {
  local s="$1" json status codes c bad=""
  json=$(cph "$s" health --format json 2>/dev/null) || { echo "unreachable"; return 1; }
  status=$(jq -r '.status' <<<"$json")
  codes=$(jq -r '.checks | keys[]' <<<"$json")
  for c in $codes; do
    [[ " $HARMLESS_WARNINGS " == *" $c "* ]] || bad="$bad $c"
  done
  echo "$status${codes:+ ($(echo "$codes" | tr '\n' ' ' | sed 's/ $//'))}"
  [[ $status == HEALTH_OK || ($status == HEALTH_WARN && -z $bad) ]]
}

site_ready() {
  local s="$1"
  site_health "$s" >/dev/null || return 1
  [[ $(cph "$s" pg stat --format json | jq -r '[.pg_summary.num_pg_by_state[] |
      select(.name == "active+clean") | .num] | add // 0') == \
     $(cph "$s" pg stat --format json | jq -r '.pg_summary.num_pgs') ]] || return 1
  rbdc "$s" ls rbd >/dev/null
}

site_running() {
  local s="$1" k
  for k in mon mgr osd; do pid_alive "$(read_pid "$s" "$k")" || return 1; done
}

# wait_ready SITE: wait until SITE is healthy; 1 (after showing why) when a daemon exits or
# TIMEOUT passes.
wait_ready() {
  local s="$1" deadline=$((SECONDS + TIMEOUT))
  until site_ready "$s" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "$s: not healthy after ${TIMEOUT}s: $(site_health "$s" || true)"
      cph "$s" health detail >&2 || true
      show_logs "$s"
      return 1
    fi
    if ! site_running "$s"; then
      show_logs "$s"
      log "$s: a daemon exited"
      return 1
    fi
    sleep 1
  done
}

stop_site() {
  local s="$1" k pid
  for k in rbd-mirror osd mgr mon; do stop_daemon "$s" "$k"; done
  for pid in $(stray_pids "$s"); do
    log "$s: stopping daemon without pid file: pid $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline"))"
    kill -TERM "$pid" 2>/dev/null || true
  done
}

cmd_up() {
  require_root
  mkdir -p "$LAB_DIR"
  install_packages
  local s all_up=1
  for s in "${SITES[@]}"; do
    if ! site_running "$s" || ! site_ready "$s"; then all_up=0; fi
  done
  if ((all_up)); then log "both clusters already up and healthy"; cmd_status; return 0; fi
  local t0=$SECONDS
  local -A restarted=()
  for s in "${SITES[@]}"; do
    if [[ -f $(site_dir "$s")/bootstrapped && -f $(site_conf "$s") ]]; then
      log "$s: restarting from existing data"
      start_site "$s"
      restarted[$s]=1
    else
      bootstrap_site "$s"
    fi
  done
  for s in "${SITES[@]}"; do
    wait_ready "$s" && continue
    # The lab holds test data only. Data an earlier run left unusable (a full disk aborts the
    # mon mid-transaction; a killed OSD can leave bluestore unopenable) must not fail every
    # later run on this machine: rebuild that cluster from scratch, once.
    [[ -n ${restarted[$s]:-} ]] || die "$s did not become healthy"
    log "$s: existing data is unusable; rebuilding the cluster from scratch"
    stop_site "$s"
    sleep 0.5
    [[ -z $(stray_pids "$s") ]] || die "$s: processes still running: $(stray_pids "$s")"
    bootstrap_site "$s"
    wait_ready "$s" || die "$s did not become healthy after a rebuild"
  done
  log "both clusters healthy after $((SECONDS - t0)) s"
  cmd_status
}

cmd_down() {
  require_root
  local purge=0
  [[ ${1:-} == --purge ]] && purge=1
  local s
  for s in "${SITES[@]}"; do
    [[ -d $(site_dir "$s") ]] || continue
    stop_site "$s"
  done
  sleep 0.5
  for s in "${SITES[@]}"; do
    [[ -z $(stray_pids "$s") ]] || die "$s: processes still running: $(stray_pids "$s")"
  done
  if ((purge)); then
    for s in "${SITES[@]}"; do
      rm -f "$(site_conf "$s")" "$(site_admin_keyring "$s")"
    done
    rm -rf "$LAB_DIR"
    log "purged $LAB_DIR and /etc/ceph/site-{a,b}.*"
  fi
  log "down"
}

cmd_status() {
  local s k rc=0 h pids
  for s in "${SITES[@]}"; do
    pids=""
    for k in mon mgr osd rbd-mirror; do
      local p
      p=$(read_pid "$s" "$k")
      if [[ -n $p ]]; then
        if pid_alive "$p"; then pids+=" $k=$p"; else pids+=" $k=$p(dead)"; fi
      fi
    done
    if [[ ! -f $(site_conf "$s") ]]; then
      h="not created"; rc=1
    elif ! site_running "$s"; then
      h="not running"; rc=1
    else
      h=$(site_health "$s") || rc=1
    fi
    printf '%s  %-40s pids:%s\n' "$s" "$h" "${pids:- none}"
  done
  return "$rc"
}

# Mirroring --------------------------------------------------------------------------------
cmd_mirror_up() {
  require_root
  local mode="${1:-}"
  case "$mode" in
    snapshot) pool_mode=image ;;
    journal) pool_mode=pool ;;
    *) die "usage: $0 mirror-up snapshot|journal" ;;
  esac
  cmd_status >/dev/null || die "lab is not up and healthy (run: $0 up)"
  local a=site-a b=site-b bdir
  bdir=$(site_dir "$b")
  # journal mode: every image with the journaling feature is mirrored (pool mode "pool");
  # snapshot mode: images are enabled one by one with "rbd mirror image enable IMG snapshot".
  local cur
  cur=$(rbdc "$a" mirror pool info rbd --format json | jq -r '.mode')
  if [[ $cur != "$pool_mode" ]]; then
    [[ $cur == disabled ]] || die "pool mirroring already enabled in mode '$cur'; run mirror-down first"
    rbdc "$a" mirror pool enable rbd "$pool_mode" --site-name "$a"
    rbdc "$b" mirror pool enable rbd "$pool_mode" --site-name "$b"
  fi
  if [[ $(rbdc "$b" mirror pool info rbd --format json | jq '.peers | length') == 0 ]]; then
    rbdc "$a" mirror pool peer bootstrap create --site-name "$a" rbd >"$bdir/rbd-mirror/token"
    rbdc "$b" mirror pool peer bootstrap import --site-name "$b" --direction rx-only rbd \
      "$bdir/rbd-mirror/token"
    rm -f "$bdir/rbd-mirror/token"
  fi
  local id
  id=$(site_id "$b")
  if [[ ! -s $bdir/rbd-mirror/keyring ]]; then
    cph "$b" auth get-or-create "client.rbd-mirror.$id" mon 'profile rbd-mirror' \
      osd 'profile rbd' -o "$bdir/rbd-mirror/keyring" >/dev/null
  fi
  start_daemon "$b" rbd-mirror rbd-mirror -f --cluster "$b" --id "rbd-mirror.$id"
  echo "$mode" >"$bdir/rbd-mirror/mode"
  # Wait until the daemon registered with the mgr service map and sees its peer.
  local deadline=$((SECONDS + 60))
  until [[ $(rbdc "$b" mirror pool status rbd --format json 2>/dev/null |
    jq -r '.summary.daemon_health // "UNKNOWN"') == OK ]]; do
    if ((SECONDS >= deadline)); then
      show_logs "$b"
      die "rbd-mirror for $b did not report healthy within 60 s"
    fi
    pid_alive "$(read_pid "$b" rbd-mirror)" || { show_logs "$b"; die "rbd-mirror exited"; }
    sleep 1
  done
  log "mirroring $a -> $b in $mode mode (pool mode $pool_mode); rbd-mirror pid $(read_pid "$b" rbd-mirror)"
}

cmd_mirror_down() {
  require_root
  local s img uuid mode
  stop_daemon site-b rbd-mirror
  for s in site-a site-b; do
    site_running "$s" || continue
    mode=$(rbdc "$s" mirror pool info rbd --format json | jq -r '.mode')
    [[ $mode == disabled ]] && continue
    # Images enabled one by one (image mode) must be disabled before the pool can be.
    for img in $(rbdc "$s" ls rbd); do
      if [[ $(rbdc "$s" info "rbd/$img" --format json | jq -r '.mirroring.state // "disabled"') == enabled ]]; then
        if [[ $mode == image ]]; then
          rbdc "$s" mirror image disable --force "rbd/$img" || log "$s: could not disable mirroring of $img"
        fi
      fi
    done
    for uuid in $(rbdc "$s" mirror pool info rbd --format json | jq -r '.peers[].uuid'); do
      rbdc "$s" mirror pool peer remove rbd "$uuid"
    done
    rbdc "$s" mirror pool disable rbd || log "$s: pool mirroring not disabled (non-primary images left?)"
  done
  rm -f "$(site_dir site-b)/rbd-mirror/mode"
  log "mirroring down"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    up) cmd_up ;;
    down) cmd_down "$@" ;;
    status) cmd_status ;;
    mirror-up) cmd_mirror_up "$@" ;;
    mirror-down) cmd_mirror_down ;;
    *)
      sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"
