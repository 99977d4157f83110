#!/usr/bin/env bash
# Benchmarks the REST API against raw PostgreSQL in the same run (docs/benchmarks.md).
#   task create over HTTP at 32 clients vs pgbench doing the same two inserts per
#   transaction at 32 clients (run before and after it); task list (50 rows) over HTTP.
# Needs: wrk, pgbench, a PostgreSQL (DATABASE_URL's server, else 127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-32}
# DATABASE_URL's server, else the local one over its unix socket (the way the managed
# database is reached; TRANSPORT=tcp for 127.0.0.1:5432), else over TCP. Server and
# pgbench always use the same transport.
if [ -n "${DATABASE_URL:-}" ]; then
  ADMIN_URL=$DATABASE_URL; DB_URL="${ADMIN_URL%/*}/kodel_bench"
elif [ "${TRANSPORT:-unix}" = unix ] && [ -S /var/run/postgresql/.s.PGSQL.5432 ]; then
  ADMIN_URL="postgres://postgres@%2Fvar%2Frun%2Fpostgresql/postgres"; DB_URL="postgres://postgres@%2Fvar%2Frun%2Fpostgresql/kodel_bench"
else
  ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"; DB_URL="postgres://postgres@127.0.0.1:5432/kodel_bench"
fi
DB=kodel_bench
PORT=${PORT:-7790}
BASE="http://127.0.0.1:$PORT"
for t in wrk pgbench psql curl jq; do command -v $t >/dev/null || { echo "bench-api.sh: $t is missing (apt-get install wrk postgresql-client curl jq)" >&2; exit 1; }; done

cargo build --release --locked -p kodel-server >/dev/null
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null
work=$(mktemp -d)
RUST_LOG=warn DATABASE_URL="$DB_URL" ./target/release/kodel-server --listen "127.0.0.1:$PORT" ${POOL:+--db-pool "$POOL"} 2>"$work/server.log" &
server=$!
finish() {
  kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap finish EXIT
for _ in $(seq 100); do curl -sf "$BASE/readyz" >/dev/null && break; sleep 0.1; done

api() { curl -sf -X "$1" "$BASE$2" -H "authorization: Bearer ${TOKEN:-}" -H 'content-type: application/json' ${3:+-d "$3"}; }
curl -sf -X POST "$BASE/api/v1/auth/register" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"benchmark-password","name":"Bench"}' >/dev/null
access=$(curl -sf -X POST "$BASE/api/v1/auth/login" -H 'content-type: application/json' \
  -d '{"email":"bench@example.com","password":"benchmark-password"}' | jq -r .access_token)
TOKEN=$access
TOKEN=$(api POST /api/v1/tokens '{"name":"bench"}' | jq -r .token)
api POST /api/v1/orgs '{"slug":"bench","name":"Bench"}' >/dev/null
api POST /api/v1/orgs/bench/projects '{"key":"BEN","name":"Bench"}' >/dev/null
api POST /api/v1/orgs/bench/projects/BEN/tasks '{"title":"warm-up"}' >/dev/null

cat > "$work/create.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"title":"A benchmark task","description":"made by wrk","labels":["bench"],"priority":"medium"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
cat > "$work/list.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA

# Raw PostgreSQL: the create's two inserts in one transaction, through pgbench. It
# runs before and after the HTTP create, and the ratio is taken against the faster run.
read -r project status <<<"$(psql "$DB_URL" -Atc "SELECT p.id, s.id FROM org_bench.projects p JOIN org_bench.statuses s ON s.workflow_id = p.workflow_id ORDER BY s.position LIMIT 1" | tr '|' ' ')"
seq_name="org_bench.task_number_${project//-/}"
cat > "$work/insert.sql" <<SQL
BEGIN;
WITH t AS (
  INSERT INTO org_bench.tasks (id, project_id, number, title, description, status_id, priority, labels, event_seq)
  VALUES (gen_random_uuid(), '$project', nextval('$seq_name'), 'A benchmark task', 'made by pgbench', '$status', 'medium', '{bench}', 1)
  RETURNING id, project_id)
INSERT INTO org_bench.task_events (task_id, project_id, seq, type, payload) SELECT id, project_id, 1, 'task.created', '{}' FROM t;
END;
SQL
raw_pg() {
  echo "== raw PostgreSQL ($1): the same two inserts in one transaction, pgbench, $CLIENTS clients, ${DURATION}s"
  pgbench -n -M prepared -c "$CLIENTS" -j 2 -T "$DURATION" -f "$work/insert.sql" "$DB_URL" 2>&1 | tee "$work/pgbench-$1.txt" | grep -E "tps|latency|failed|rror"
}
raw_pg before

echo "== task create over HTTP: $CLIENTS clients, ${DURATION}s"
wrk -t2 -c"$CLIENTS" -d"${DURATION}s" --latency -s "$work/create.lua" "$BASE/api/v1/orgs/bench/projects/BEN/tasks" | tee "$work/create.txt"
errors=$(grep -E "Non-2xx|Socket errors" "$work/create.txt" || true)
[ -z "$errors" ] || echo "!! $errors"
echo "(tasks in the project now: $(psql "$DB_URL" -Atc "SELECT count(*) FROM org_bench.tasks"))"

raw_pg after

echo "== task list (50 rows) over HTTP: $CLIENTS clients, ${DURATION}s"
wrk -t2 -c"$CLIENTS" -d"${DURATION}s" --latency -s "$work/list.lua" "$BASE/api/v1/orgs/bench/projects/BEN/tasks?limit=50" | tee "$work/list.txt"
rows=$(api GET "/api/v1/orgs/bench/projects/BEN/tasks?limit=50" | jq '.data | length')
echo "(each list answer carries $rows tasks)"

http=$(awk '/Requests\/sec/ {print $2}' "$work/create.txt")
before=$(awk '/^tps/ {print $3}' "$work/pgbench-before.txt")
after=$(awk '/^tps/ {print $3}' "$work/pgbench-after.txt")
pg=$(awk -v a="$before" -v b="$after" 'BEGIN { print (a > b ? a : b) }')
echo "== summary"
echo "task create HTTP: $http req/s; p99 $(awk '/ 99%/ {print $2}' "$work/create.txt")"
echo "raw PostgreSQL:   $before tx/s before, $after tx/s after (the ratio uses $pg)"
awk -v h="$http" -v p="$pg" 'BEGIN { printf "ratio HTTP / raw: %.2f\n", h / p }'
echo "task list (50):   $(awk '/Requests\/sec/ {print $2}' "$work/list.txt") req/s; p99 $(awk '/ 99%/ {print $2}' "$work/list.txt")"
echo "server RSS after: $(awk '/VmRSS/ {print $2, $3}' /proc/$server/status)"
