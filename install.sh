#!/usr/bin/env bash
# Installs Kodel on Debian/Ubuntu: the system packages it uses (PostgreSQL for the
# managed local database, git, bubblewrap and tmux for agents), then release builds of
# kodel, kodel-server and kodel-agent into a directory on PATH. Safe to run again.
#
#   PREFIX=/opt/kodel ./install.sh     # binaries into /opt/kodel/bin
set -euo pipefail
cd "$(dirname "$0")"

SCRIPT_NAME=install.sh
. scripts/lib.sh

# System packages, only those missing.
packages=(postgresql postgresql-client git bubblewrap tmux ca-certificates pkg-config build-essential)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
else
  log "system packages present"
fi

command -v cargo >/dev/null || die "cargo not found: install Rust 1.90 or newer (https://rustup.rs), then run ./install.sh again"

log "building release binaries: the first build fetches crates from crates.io and takes about 5 minutes on 2 free cores (15 or more on a busy machine); cargo shows each crate as it goes"
cargo build --release --locked -p kodel-server -p kodel-tui -p kodel-agent

if [ -n "${PREFIX:-}" ]; then bindir="$PREFIX/bin"
elif [ "$(id -u)" = 0 ]; then bindir=/usr/local/bin
else bindir="$HOME/.local/bin"; fi
mkdir -p "$bindir"
for b in kodel kodel-server kodel-agent; do
  install -m 0755 "target/release/$b" "$bindir/$b.new"
  mv -f "$bindir/$b.new" "$bindir/$b"
done
log "installed kodel, kodel-server and kodel-agent into $bindir"
case ":$PATH:" in
  *":$bindir:"*) ;;
  *) log "add $bindir to your PATH, e.g.: export PATH=\"$bindir:\$PATH\"" ;;
esac
