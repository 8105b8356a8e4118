#!/usr/bin/env bash
# Installs what ferry's tests need on a fresh Debian 12 machine and runs
# every test: formatting, lints, unit, property, end-to-end (real agents,
# real QUIC on loopback), the RBD tests against two real Ceph clusters
# (scripts/ceph-lab.sh, started here and stopped again if this script
# started it) and the fuzz-corpus replays.
#
# Usage: scripts/test.sh            (CI runs exactly this via .ci/run)
#        FERRY_SKIP_CEPH=1 scripts/test.sh   skips the Ceph lab and its tests
#        FERRY_SKIP_FUZZ=1 scripts/test.sh   skips the 30 s fuzz runs
#
# No silent skips: tests that need something outside the workspace (the
# Ceph lab, root and loop devices, systemd-analyze) are #[ignore]d for a
# plain `cargo test`; this script runs them (--include-ignored) with
# FERRY_REQUIRE_ALL=1, so a missing prerequisite fails the run. Left out on
# purpose, by name: the long runs (`*_long`), two measurements run by hand,
# a child-process half of a crash test, and with FERRY_SKIP_CEPH=1 the
# `lab_` tests. The fault harnesses get a fresh seed per run (printed, with
# the command that replays it) unless FERRY_FAULT_SEED / FERRY_CTL_FAULT_SEED
# are set. Every fuzz target must be listed by `cargo fuzz list`.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# System packages: a C toolchain for zstd/ring/blake3's C and assembly,
# pkg-config, iproute2 for tests that build network namespaces, systemd
# (systemd-analyze) and man-db for the service tests, faketime for the
# control fault harness.
need=()
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# systemd-analyze verifies the units; man renders the generated man pages.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v man >/dev/null 2>&1 || need+=(man-db)
# losetup / blockdev: the at-rest test drives a loop device.
command -v losetup >/dev/null 2>&1 || need+=(mount)
command -v blockdev >/dev/null 2>&1 || need+=(util-linux)
# libfaketime moves the agents' wall clock in the control fault harness.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(faketime)
# mkfs.xfs: the files backend's reflink test runs on a loop-mounted XFS.
command -v mkfs.xfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.xfs ] || need+=(xfsprogs)
# Debian's chromium and chromedriver: the console's browser tests
# (tests/src/browser.rs) drive a headless chromium, as root (--no-sandbox)
# and without a display.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
# promtool checks and unit-tests contrib/prometheus/ferry-alerts.yml; Debian
# ships it only in the prometheus package, whose server is stopped again
# below (only promtool is wanted).
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
if ! command -v promtool >/dev/null 2>&1; then
  log "installing prometheus (for promtool)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (rustup) first" >&2
  exit 2
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --features ferry-e2e/failpoints -- -D warnings

log "structure rules and the design documents' file paths (issue 14)"
python3 scripts/check-structure.py
python3 scripts/check-doc-paths.py

log "building binaries (with fail points for the crash tests)"
cargo build --workspace --bins --features ferry-e2e/failpoints

# The two-site Ceph lab for the rbd: tests (installs Ceph Pacific and
# python3-rbd when missing; ~40 s to start, ~1 GiB of memory). `status`
# exits 0 only when both clusters are healthy; a lab someone else started is
# used and left running.
lab_started_here=0
skip_args=(
  # Long runs of the fault harnesses (~30 min and more): by hand, see README.
  --skip _long
  # Measurements, not pass/fail tests (engine): run by hand in release.
  --skip throughput_probe
  --skip bench_pipeline_1gib
  # The child half of crash_mid_transaction_loses_only_the_open_transaction
  # (agent control store): its parent runs it in a child process; alone it
  # has nothing to crash and would return at once.
  --skip crash_child
  # Run on its own below, retried once (see there).
  --skip lab_groups_spread_over_a_sites_agents_and_move_on_without_a_resync
)
if [ "${FERRY_SKIP_CEPH:-0}" != "1" ]; then
  if ! scripts/ceph-lab.sh status >/dev/null 2>&1; then
    log "starting the Ceph lab (scripts/ceph-lab.sh up)"
    $SUDO scripts/ceph-lab.sh up
    lab_started_here=1
  fi
  export FERRY_CEPH_LAB=1
else
  skip_args+=(--skip lab_)
fi
stop_lab() {
  if [ "$lab_started_here" = 1 ]; then
    log "stopping the Ceph lab"
    $SUDO scripts/ceph-lab.sh down --purge || true
  fi
}

# A file system with reflinks for the files backend's restore/failover test
# (XFS with reflink=1 on a 512 MiB sparse loop file), unless the caller
# names one in FERRY_REFLINK_DIR.
reflink_mount=""
if [ -z "${FERRY_REFLINK_DIR:-}" ]; then
  reflink_mount=$(mktemp -d /var/tmp/ferry-reflink.XXXXXX)
  truncate -s 512M "${reflink_mount}.img"
  /usr/sbin/mkfs.xfs -q -m reflink=1 "${reflink_mount}.img"
  $SUDO mount -o loop "${reflink_mount}.img" "$reflink_mount"
  $SUDO chown "$(id -u):$(id -g)" "$reflink_mount"
  export FERRY_REFLINK_DIR="$reflink_mount"
fi
stop_reflink() {
  if [ -n "$reflink_mount" ]; then
    $SUDO umount "$reflink_mount" || true
    rm -rf "$reflink_mount" "${reflink_mount}.img" || true
    reflink_mount=""
  fi
}

# Fresh fault-harness seeds per run (a u32 from /dev/urandom each), so CI
# tries new fault sequences instead of seed 1 every time; set either
# variable to replay a run.
random_u32() { od -An -N4 -tu4 /dev/urandom | tr -d ' \n'; }
export FERRY_FAULT_SEED="${FERRY_FAULT_SEED:-$(random_u32)}"
export FERRY_CTL_FAULT_SEED="${FERRY_CTL_FAULT_SEED:-$(random_u32)}"
seeds_line="fault harness seeds: FERRY_FAULT_SEED=${FERRY_FAULT_SEED} FERRY_CTL_FAULT_SEED=${FERRY_CTL_FAULT_SEED} (replay: FERRY_FAULT_SEED=${FERRY_FAULT_SEED} FERRY_CTL_FAULT_SEED=${FERRY_CTL_FAULT_SEED} scripts/test.sh)"
screenshot_dir=""
print_screenshots() {
  if [ -n "$screenshot_dir" ] && [ -d "$screenshot_dir" ]; then
    echo "console screenshots: ${screenshot_dir} ($(find "$screenshot_dir" -name '*.png' | wc -l) PNG files)"
  fi
}
on_exit() {
  local status=$?
  stop_lab
  stop_reflink
  # Repeat the seeds at the end of a failed run, where the failure is.
  if [ "$status" -ne 0 ]; then echo "$seeds_line" >&2; print_screenshots; fi
}
trap on_exit EXIT

# Screenshots of the console's pages (and of any browser-test failure) are
# this run's artifacts: one fresh directory, printed at the end.
screenshot_dir="$(realpath -m "${CARGO_TARGET_DIR:-target}")/console-screenshots"
rm -rf "$screenshot_dir"
mkdir -p "$screenshot_dir"
export FERRY_SCREENSHOT_DIR="$screenshot_dir"

# A missing prerequisite of an ignored test fails it here (tests/src/prereq.rs).
export FERRY_REQUIRE_ALL=1
log "cargo test (ignored tests included, except: ${skip_args[*]})"
echo "$seeds_line"
cargo test --workspace --no-fail-fast --features ferry-e2e/failpoints -- --include-ignored --test-threads 2 "${skip_args[@]}"
# The multi-agent lease test fails now and then (2 of ~12 runs on main, 2
# of 6 on a helper's branch): the agent that took the killed agent's groups
# over dies on SIGABRT, a glibc assertion in native code (`pthread_mutex_lock
# ... e != ESRCH || !robust`, a freed or garbage mutex), about 1 s after a
# capture that waited ~20 s for librbd to break the exclusive lock the test's
# SIGKILLed writer left. The cause is not found yet (issue 18). Until it is,
# the test runs here, and a failure prints every agent's exit status and log
# tail (tests/src/lib.rs) before one more try: a second failure fails the run.
if [ "${FERRY_SKIP_CEPH:-0}" != "1" ]; then
  leases_test() {
    cargo test -p ferry-e2e --features ferry-e2e/failpoints --test rbd_lab_leases -- --include-ignored
  }
  if ! leases_test; then
    echo "rbd_lab_leases failed (agents' logs above); trying it once more (issue 18)" >&2
    leases_test
  fi
fi
stop_lab
lab_started_here=0
stop_reflink

# Fuzz targets: CI builds them and runs each briefly on its committed
# corpus (longer runs: see README). cargo-fuzz is installed if missing.
if [ "${FERRY_SKIP_FUZZ:-0}" != "1" ]; then
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
  fi
  # Every fuzz_targets/*.rs must be a target cargo-fuzz knows: a failing
  # `cargo fuzz list` or a different set must not fuzz fewer targets quietly.
  expected_targets=$(cd fuzz/fuzz_targets && ls -1 -- *.rs | sed 's/\.rs$//' | sort)
  if ! listed_targets=$(cd fuzz && cargo fuzz list); then
    echo "cargo fuzz list failed" >&2
    exit 1
  fi
  listed_targets=$(printf '%s\n' "$listed_targets" | sed '/^$/d' | sort)
  if [ -z "$expected_targets" ] || [ "$listed_targets" != "$expected_targets" ]; then
    echo "cargo fuzz list does not match fuzz/fuzz_targets/*.rs:" >&2
    diff <(echo "$expected_targets") <(echo "$listed_targets") >&2 || true
    exit 1
  fi
  log "fuzz targets: $(echo $expected_targets)"
  for target in $expected_targets; do
    log "fuzzing ${target} for 30 s"
    # Fuzz a copy of the corpus: libFuzzer adds what it finds to its corpus dir.
    work_corpus=$(mktemp -d)
    cp -r "fuzz/corpus/${target}/." "${work_corpus}/" 2>/dev/null || true
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "${target}" "${work_corpus}" -- -max_total_time=30 -rss_limit_mb=2048 >/dev/null 2>"/tmp/ferry-fuzz-${target}.log") \
      || { tail -n 40 "/tmp/ferry-fuzz-${target}.log"; echo "fuzz target ${target} failed" >&2; exit 1; }
    grep -E "^(#[0-9]+: cov|Done)" "/tmp/ferry-fuzz-${target}.log" | tail -n 1 || true
    rm -rf "${work_corpus}"
  done
fi
print_screenshots
echo "all checks passed"
