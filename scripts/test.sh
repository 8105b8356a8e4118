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
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
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

log "building binaries (with fail points for the crash tests)"
cargo build --workspace --bins --features ferry-e2e/failpoints

# The two-site Ceph lab for the rbd: tests (installs Ceph Pacific and
# python3-rbd when missing; ~40 s to start, ~1 GiB of memory). `status`
# exits 0 only when both clusters are healthy; a lab someone else started is
# used and left running.
lab_started_here=0
if [ "${FERRY_SKIP_CEPH:-0}" != "1" ]; then
  if ! scripts/ceph-lab.sh status >/dev/null 2>&1; then
    log "starting the Ceph lab (scripts/ceph-lab.sh up)"
    $SUDO scripts/ceph-lab.sh up
    lab_started_here=1
  fi
  export FERRY_CEPH_LAB=1
fi
stop_lab() {
  if [ "$lab_started_here" = 1 ]; then
    log "stopping the Ceph lab"
    $SUDO scripts/ceph-lab.sh down --purge || true
  fi
}
trap stop_lab EXIT

log "cargo test"
cargo test --workspace --features ferry-e2e/failpoints -- --test-threads 2
stop_lab
lab_started_here=0

# Fuzz targets: CI builds them and runs each briefly on its committed
# corpus (longer runs: see README). cargo-fuzz is installed if missing.
if [ "${FERRY_SKIP_FUZZ:-0}" != "1" ]; then
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
  fi
  for target in $(cd fuzz && cargo fuzz list 2>/dev/null); do
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
echo "all checks passed"
