#!/usr/bin/env bash
# The one test command. Brings up what the tests need, then runs every test.
#
# Database: DATABASE_URL if set (tests create and drop their own databases on that
# server), else PostgreSQL on 127.0.0.1:5432 if it answers, else a private cluster
# started here in a temporary directory and stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

SCRIPT_NAME=test.sh
. scripts/lib.sh

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  d=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
  [ -x "$d/initdb" ] && echo "$d"
}

# --- tools -------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs), then run again"
missing=()
[ -n "$(pg_bindir)" ] || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v pg_isready >/dev/null || missing+=(postgresql-client)
command -v git >/dev/null || missing+=(git)
command -v cc >/dev/null || missing+=(build-essential)
command -v pkg-config >/dev/null || missing+=(pkg-config)
# The agent's bash tool runs under bubblewrap; its sandbox tests need it.
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
# The TUI is tested in a real terminal.
command -v tmux >/dev/null || missing+=(tmux)
# /metrics is scraped by a real Prometheus.
command -v prometheus >/dev/null || missing+=(prometheus)
# Analytics are shipped to a real ClickHouse (Debian's 18.16; each test runs its own).
[ -x /usr/sbin/clickhouse-server ] || missing+=(clickhouse-server)
# ... and over HTTPS, with a certificate made by openssl.
command -v openssl >/dev/null || missing+=(openssl)
# Jobs in containers run on a real Docker Engine (each test starts a private dockerd),
# with base images made from Debian's static busybox (no registry is reachable).
[ -x /usr/sbin/dockerd ] || missing+=(docker.io)
{ [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; } || missing+=(busybox-static)
# Several server replicas are tested behind a real load balancer.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
apt_install ${missing[@]+"${missing[@]}"}

# The LLM gateway is tested with the official OpenAI Python client.
if ! python3 -c 'import openai' >/dev/null 2>&1; then
  log "installing the openai Python package (for the gateway test)"
  python3 -m pip install --quiet --disable-pip-version-check openai 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages openai \
    || die "cannot install the openai Python package: pip install openai"
fi

# The fuzz test (kodel-server/tests/fuzz.rs) runs schemathesis on the served OpenAPI.
schemathesis_venv=${XDG_CACHE_HOME:-$HOME/.cache}/kodel/schemathesis
if [ ! -x "$schemathesis_venv/bin/schemathesis" ]; then
  log "installing schemathesis (for the fuzz test)"
  python3 -m venv "$schemathesis_venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$schemathesis_venv"; }
  "$schemathesis_venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5' \
    || die "cannot install schemathesis: pip install schemathesis"
fi
export KODEL_SCHEMATHESIS="$schemathesis_venv/bin/schemathesis"

# Current ClickHouse, embedded in PyPI's chdb-core: the analytics DDL and report
# queries are also run there (kodel-server/tests/analytics.rs).
chdb_venv=${XDG_CACHE_HOME:-$HOME/.cache}/kodel/chdb
if ! "$chdb_venv/bin/python" -c 'import chdb' >/dev/null 2>&1; then
  log "installing chdb-core (current ClickHouse, for the analytics test)"
  python3 -m venv "$chdb_venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$chdb_venv"; }
  "$chdb_venv/bin/pip" install --quiet --disable-pip-version-check --no-deps chdb-core \
    || die "cannot install chdb-core: pip install --no-deps chdb-core"
fi
export KODEL_CHDB_PYTHON="$chdb_venv/bin/python"

# The web view is tested in Debian's chromium driven by npm's playwright-core, and SSO
# against npm's oidc-provider (a real OpenID provider). Node runs only in tests.
command -v chromium >/dev/null || apt_install chromium
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
node_dir=${XDG_CACHE_HOME:-$HOME/.cache}/kodel/node
if ! cmp -s kodel-testkit/web/package.json "$node_dir/package.json" || [ ! -d "$node_dir/node_modules/oidc-provider" ]; then
  log "installing playwright-core and oidc-provider (for the web and SSO tests)"
  mkdir -p "$node_dir"
  cp kodel-testkit/web/package.json "$node_dir/package.json"
  (cd "$node_dir" && npm install --silent --no-audit --no-fund >/dev/null) \
    || die "cannot install the web tests' node packages: cd $node_dir && npm install"
fi
export KODEL_NODE_MODULES="$node_dir/node_modules"

# --- database ----------------------------------------------------------------
private_dir=""
cleanup() {
  if [ -n "${KODEL_TEST_DATABASE_URL:-}" ] && [ -z "$private_dir" ]; then
    drop_test_databases || true
  fi
  if [ -n "$private_dir" ]; then
    log "stopping the private PostgreSQL"
    run_pg "$(pg_bindir)/pg_ctl" -D "$private_dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$private_dir"
  fi
}
trap cleanup EXIT

run_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

drop_test_databases() {
  psql "$KODEL_TEST_DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'kodel\_test\_%'" 2>/dev/null |
    while read -r db; do psql "$KODEL_TEST_DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done
}

if [ -n "${DATABASE_URL:-}" ]; then
  export KODEL_TEST_DATABASE_URL="$DATABASE_URL"
  log "using DATABASE_URL for test databases"
elif pg_isready -q -h 127.0.0.1 -p 5432 -t 3 && psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  export KODEL_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  log "using PostgreSQL on 127.0.0.1:5432"
else
  bindir=$(pg_bindir)
  private_dir=$(mktemp -d /tmp/kodel-test-pg.XXXXXX)
  chmod 755 "$private_dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$private_dir"
  port=55432
  while pg_isready -q -h 127.0.0.1 -p "$port" -t 1; do port=$((port + 1)); done
  log "starting a private PostgreSQL on 127.0.0.1:$port"
  run_pg "$bindir/initdb" -D "$private_dir/data" -U postgres --auth=trust --no-sync >/dev/null
  run_pg "$bindir/pg_ctl" -D "$private_dir/data" -l "$private_dir/log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $private_dir -c max_connections=300 -c fsync=off" start >/dev/null \
    || { cat "$private_dir/log" >&2; die "the private PostgreSQL did not start"; }
  export KODEL_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
fi
drop_test_databases || true

# --- tests -------------------------------------------------------------------
# The CLI tests run the kodel-server binary, so build every binary first.
# A clean checkout (CI) gains nothing from incremental compilation and it doubles the
# target directory; a developer's repeated runs keep it.
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=0; fi
log "building ($(df -h --output=avail . | tail -n 1 | tr -d ' ') free on this disk)"
cargo build --workspace --all-targets --locked
if cargo clippy --version >/dev/null 2>&1; then
  log "clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi
if cargo nextest --version >/dev/null 2>&1; then
  log "running tests (nextest)"
  cargo nextest run --workspace --locked
else
  log "running tests (cargo test; install cargo-nextest for a faster run)"
  cargo test --workspace --locked
fi
