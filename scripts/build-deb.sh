#!/usr/bin/env bash
# Builds the Debian package of ferry (target/debian/ferry_*.deb): release
# binaries, the systemd units, a commented /etc/ferry/agent.toml, shell
# completions and man pages generated from the clap definitions, and the
# maintainer scripts of contrib/debian (user `ferry`, /var/lib/ferry).
#
# Usage: scripts/build-deb.sh        (installs cargo-deb when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
target=${CARGO_TARGET_DIR:-$root/target}

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "==> installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

echo "==> building release binaries"
cargo build --release -p ferry-agent --bins

# Generated assets (paths named in agent/Cargo.toml [package.metadata.deb]).
assets=$target/release/assets
rm -rf "$assets"
mkdir -p "$assets/completions" "$assets/man"
for bin in ferry ferry-agent; do
  "$target/release/$bin" gen-completions bash >"$assets/completions/$bin.bash"
  "$target/release/$bin" gen-completions zsh >"$assets/completions/_$bin"
  "$target/release/$bin" gen-completions fish >"$assets/completions/$bin.fish"
  "$target/release/$bin" gen-man "$assets/man" >/dev/null
done
gzip -9n "$assets"/man/*.1
# The default configuration is the one `ferry-agent init` writes.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$target/release/ferry-agent" init --dir "$tmp/agent" >/dev/null
cp "$tmp/agent/config.toml" "$assets/agent.toml"

echo "==> cargo deb"
# Stripped: the release profile keeps debug info for benchmarks and
# backtraces, which would make the package ~10x larger.
cargo deb -p ferry-agent --no-build --strip "$@"
ls -l "$target"/debian/*.deb
