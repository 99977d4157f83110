#!/usr/bin/env python3
"""Server memory under hostile input and many connections (docs/benchmarks.md, "Memory").

Starts the release kodel-server on a fresh database and reads its resident memory (RSS)
at four moments:
  rest        after start-up and a few ordinary requests;
  hostile     the peak during a hostile run: bodies at and over the 1 MiB limit, deeply
              nested JSON, 50 long labels per task, 10,000 labels (refused), 99 KB
              comments, and 64 event streams open (half of them never read) while every
              event is sent to each;
  after       10 s after the hostile run ended and its streams closed;
  ws          after 1,000 agent WebSocket connections (each says hello, so 1,000 agents
              register) were held open together and then closed, 10 s later.

Usage: scripts/bench-memory.py [--requests N] [--connections N] [--binary PATH]
Needs PostgreSQL (DATABASE_URL's server, else 127.0.0.1:5432) and aiohttp (installed into
~/.cache/kodel/bench-venv by the script when missing). Every request goes to 127.0.0.1.
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

VENV = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "kodel", "bench-venv")


def ensure_aiohttp():
    try:
        import aiohttp  # noqa: F401
        return
    except ImportError:
        pass
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "aiohttp"], check=True)
    if os.path.realpath(sys.prefix) != os.path.realpath(VENV):
        os.execv(python, [python, *sys.argv])


ensure_aiohttp()
import aiohttp  # noqa: E402


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin_url():
    return os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def psql(url, sql):
    subprocess.run(["psql", url, "-qc", sql], check=True, stdout=subprocess.DEVNULL)


class Peak:
    """Samples the server's RSS every 100 ms while a phase runs."""

    def __init__(self, pid):
        self.pid, self.peak, self.task = pid, 0.0, None

    async def run(self):
        while True:
            self.peak = max(self.peak, rss_mib(self.pid))
            await asyncio.sleep(0.1)

    def __enter__(self):
        self.task = asyncio.get_running_loop().create_task(self.run())
        return self

    def __exit__(self, *exc):
        self.task.cancel()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=6000, help="hostile requests (default 6000)")
    ap.add_argument("--connections", type=int, default=1000, help="agent WebSocket connections (default 1000)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--binary", default="target/release/kodel-server")
    args = ap.parse_args()

    db_name = "kodel_bench_memory"
    admin = admin_url()
    db_url = admin.rsplit("/", 1)[0] + "/" + db_name
    psql(admin, f"DROP DATABASE IF EXISTS {db_name}")
    psql(admin, f"CREATE DATABASE {db_name}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="kodel-bench-memory-")
    env = dict(os.environ, RUST_LOG="warn", DATABASE_URL=db_url, KODEL_DATA_DIR=data,
               KODEL_LOGIN_PER_ADDRESS="100000", KODEL_LOGIN_PER_ACCOUNT="100000")
    log = open(os.path.join(data, "server.log"), "w")
    server = subprocess.Popen([args.binary, "--listen", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=log)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency * 2 + 100)) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    async with http.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit(f"the server did not start: see {data}/server.log")
                await asyncio.sleep(0.1)

            async def call(method, path, token=None, body=None, raw=None):
                headers = {"content-type": "application/json"}
                if token:
                    headers["authorization"] = f"Bearer {token}"
                data = raw if raw is not None else (json.dumps(body) if body is not None else None)
                async with http.request(method, base + path, headers=headers, data=data) as r:
                    text = await r.text()
                    return r.status, (json.loads(text) if text.startswith("{") else text)

            login = {"email": "bench@example.com", "password": "benchmark-password"}
            s, reg = await call("POST", "/api/v1/auth/register", body={**login, "name": "Bench"})
            assert s < 300, reg
            s, session = await call("POST", "/api/v1/auth/login", body=login)
            assert s == 200, session
            access = session["access_token"]
            s, pat = await call("POST", "/api/v1/tokens", access, {"name": "bench"})
            token = pat["token"]
            await call("POST", "/api/v1/orgs", token, {"slug": "bench", "name": "Bench"})
            await call("POST", "/api/v1/orgs/bench/projects", token, {"key": "BEN", "name": "Bench"})
            s, agent = await call("POST", "/api/v1/orgs/bench/agent-tokens", token, {"name": "bench"})
            assert s == 201, agent
            tasks = "/api/v1/orgs/bench/projects/BEN/tasks"
            for i in range(20):
                await call("POST", tasks, token, {"title": f"warm-up {i}"})
                await call("GET", tasks, token)
            await asyncio.sleep(2)
            rest = rss_mib(server.pid)
            print(f"rest: {rest:.1f} MiB", flush=True)

            # --- hostile run -------------------------------------------------------
            big_desc = "x" * 99_000
            at_limit = json.dumps({"title": "big", "description": "y" * (1024 * 1024 - 100)})
            over_limit = "{" + '"title":"' + "z" * (4 * 1024 * 1024) + '"}'
            nested = "[" * 100_000 + "]" * 100_000
            long_labels = [("l%02d-" % i) + "a" * 58 for i in range(50)]
            many_labels = [f"l{i}" for i in range(10_000)]
            comments = "/api/v1/orgs/bench/tasks/BEN-1/comments"
            kinds = [
                ("POST", {"title": "big description", "description": big_desc, "labels": long_labels}, None),
                ("COMMENT", {"body": big_desc}, None),
                ("POST", None, at_limit),
                ("POST", None, over_limit),
                ("POST", None, nested),
                ("POST", {"title": "many labels", "labels": many_labels}, None),
                ("GET", None, None),
            ]
            counts = {}
            streams_open = asyncio.Event()
            stop_streams = asyncio.Event()
            received = [0]

            async def stream(stalled):
                headers = {"authorization": f"Bearer {token}"}
                async with http.get(f"{base}/api/v1/orgs/bench/events", headers=headers, timeout=aiohttp.ClientTimeout(total=None)) as r:
                    assert r.status == 200, r.status
                    opened[0] += 1
                    if opened[0] == 64:
                        streams_open.set()
                    if stalled:
                        # Never reads: the server must not keep what it cannot send.
                        await stop_streams.wait()
                        return
                    while not stop_streams.is_set():
                        try:
                            chunk = await asyncio.wait_for(r.content.readany(), 0.5)
                        except asyncio.TimeoutError:
                            continue
                        if not chunk:
                            break
                        received[0] += len(chunk)

            opened = [0]
            stream_tasks = [asyncio.create_task(stream(stalled=i % 2 == 1)) for i in range(64)]
            await asyncio.wait_for(streams_open.wait(), 30)
            queue = asyncio.Queue()
            for i in range(args.requests):
                queue.put_nowait(kinds[i % len(kinds)])

            async def worker():
                while not queue.empty():
                    method, body, raw = queue.get_nowait()
                    path = comments if method == "COMMENT" else tasks
                    method = "POST" if method == "COMMENT" else method
                    try:
                        s, _ = await call(method, path, token, body, raw)
                    except aiohttp.ClientError as e:
                        s = type(e).__name__
                    counts[s] = counts.get(s, 0) + 1

            started = time.monotonic()
            with Peak(server.pid) as peak:
                await asyncio.gather(*(worker() for _ in range(args.concurrency)))
                stop_streams.set()
                await asyncio.gather(*stream_tasks, return_exceptions=True)
            took = time.monotonic() - started
            hostile_peak = peak.peak
            print(f"hostile: {args.requests} requests in {took:.1f} s, answers {dict(sorted(counts.items(), key=str))}, "
                  f"{received[0] / 1e6:.1f} MB streamed to 32 reading streams (32 more never read); peak {hostile_peak:.1f} MiB", flush=True)
            if any(isinstance(k, int) and k >= 500 for k in counts):
                sys.exit("server errors in the hostile run")
            await asyncio.sleep(10)
            after = rss_mib(server.pid)
            print(f"after: {after:.1f} MiB (10 s later)", flush=True)

            # --- 1,000 WebSocket connections ---------------------------------------
            ws_url = f"ws://127.0.0.1:{port}/api/v1/agent/ws"
            sockets = []
            # Connections held open are not returned to a pool: no limit here.
            ws_http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
            hello = lambda i: json.dumps({"type": "agent.hello", "protocol": 1, "name": f"bench-{i}", "version": "0.1.0", "labels": ["bench"]})
            started = time.monotonic()
            with Peak(server.pid) as peak:
                for i in range(0, args.connections, 50):
                    batch = await asyncio.gather(*(ws_http.ws_connect(ws_url, headers={"authorization": f"Bearer {agent['token']}"}, heartbeat=None)
                                                   for _ in range(i, min(i + 50, args.connections))))
                    for j, ws in enumerate(batch):
                        await ws.send_str(hello(i + j))
                    for ws in batch:
                        msg = await asyncio.wait_for(ws.receive(), 30)
                        assert msg.type == aiohttp.WSMsgType.TEXT and "welcome" in msg.data, msg
                    sockets.extend(batch)
                held = rss_mib(server.pid)
                await asyncio.gather(*(ws.close() for ws in sockets))
                await ws_http.close()
            print(f"ws: {len(sockets)} agents connected in {time.monotonic() - started:.1f} s; {held:.1f} MiB while held, "
                  f"peak {peak.peak:.1f} MiB", flush=True)
            await asyncio.sleep(10)
            ws_after = rss_mib(server.pid)
            print(f"ws after: {ws_after:.1f} MiB (10 s after they closed)", flush=True)
            print(f"\nsummary (MiB): rest {rest:.0f} | hostile peak {hostile_peak:.0f} | after hostile {after:.0f} | "
                  f"after {len(sockets)} connections closed {ws_after:.0f}")
    finally:
        server.terminate()
        server.wait(10)
        psql(admin, f"DROP DATABASE IF EXISTS {db_name}")


if __name__ == "__main__":
    asyncio.run(main())
