# Helpers shared by install.sh and scripts/test.sh. Source it; set SCRIPT_NAME first.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "${SCRIPT_NAME:-kodel}" "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

# Installs the given Debian packages with apt (as root or through sudo).
apt_install() {
  [ $# -gt 0 ] || return 0
  command -v apt-get >/dev/null || die "apt-get not found; install these yourself: $*"
  log "installing $*"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
