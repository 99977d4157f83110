#!/usr/bin/env python3
"""Records the exact HTTP exchanges of real OpenAI-compatible model servers
(llama.cpp's llama-server and llama-cpp-python) as JSON fixtures that the Rust
test server (kodel-testkit) replays.

    record-llm-fixtures.py --llama-server http://127.0.0.1:18080/v1 \
        --llama-cpp-python http://127.0.0.1:18081/v1 [--out DIR] [--only CASE[,CASE]]
    record-llm-fixtures.py --serve-proxy --llama-server URL --llama-cpp-python URL

A recording proxy (127.0.0.1:--proxy-port, default 18090) forwards
`/rec/<server>/<case>/v1/...` to that server's base URL, streams the answer through
as it arrives and appends the exchange to DIR/<server>/<case>.json. The direct cases
below go through the same proxy. With --serve-proxy only the proxy runs (until
killed), for recording whole agent jobs.

Fixture: {"server", "model", "recorded_at", "note", "exchanges": [{"request":
{"method", "path", "body"}, "response": {"status", "content_type", "chunks", "ms"}}]}.
`chunks` are the body as read from the socket (one `read1()` of http.client each,
so never more than one HTTP chunk), decoded as UTF-8 with a split multibyte
character carried over to the next chunk; `ms` is the time from sending the request
to each chunk. Strings in the stored request are cut at 2,000 characters.

Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import codecs
import datetime as dt
import http.client
import json
import os
import re
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVERS = ("llama-server", "llama-cpp-python")
MAX_STORED_STRING = 2000
HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "host", "content-length", "accept-encoding", "x-fixture-note",
}
CASE_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------
# Upstreams


class Upstream:
    """One model server: its base URL (with /v1) and, fetched once, what it is."""

    def __init__(self, name: str, base: str):
        self.name = name
        self.base = base.rstrip("/")
        u = urllib.parse.urlsplit(self.base)
        if u.scheme != "http":
            raise SystemExit(f"{name}: only http:// upstreams are supported, not {base!r}")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        # The path in front of /v1 (usually empty): /rec/<server>/<case>/v1/x -> prefix/v1/x.
        path = u.path.rstrip("/")
        self.base_path = path
        self.prefix = path[: -len("/v1")] if path.endswith("/v1") else path
        self._info: tuple[str, str] | None = None
        self._lock = threading.Lock()

    def connection(self, timeout: float = 900) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get_json(self, path: str):
        conn = self.connection(timeout=10)
        try:
            conn.request("GET", path, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                return None
            return json.loads(data)
        except (OSError, ValueError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def info(self) -> tuple[str, str]:
        """(server name and version, model file name)."""
        with self._lock:
            if self._info is None:
                self._info = (self._server_version(), self._model_file())
            return self._info

    def _server_version(self) -> str:
        version = None
        if self.name == "llama-server":
            props = self.get_json(self.prefix + "/props") or {}
            version = props.get("build_info")
            if not version:
                models = self.get_json(self.base_path + "/models") or {}
                version = next((m.get("system_fingerprint") for m in models.get("data", []) if isinstance(m, dict)), None)
        else:
            api = self.get_json(self.prefix + "/openapi.json") or {}
            version = (api.get("info") or {}).get("version")
            if not version:
                try:
                    from importlib.metadata import version as pkg_version

                    version = pkg_version("llama_cpp_python") + " (pip metadata of the recording venv)"
                except Exception:
                    version = None
        return f"{self.name} {version or 'unknown version'}"

    def _model_file(self) -> str:
        models = self.get_json(self.base_path + "/models") or {}
        for m in models.get("data", []) or models.get("models", []):
            if isinstance(m, dict):
                ident = m.get("id") or m.get("model") or m.get("name")
                if ident:
                    return os.path.basename(ident)
        return "unknown"


# ---------------------------------------------------------------------------------
# Fixtures


def cut_strings(value):
    """A copy of `value` with every string longer than MAX_STORED_STRING cut."""
    if isinstance(value, str):
        if len(value) > MAX_STORED_STRING:
            return value[:MAX_STORED_STRING] + f"…[cut {len(value) - MAX_STORED_STRING} chars]"
        return value
    if isinstance(value, list):
        return [cut_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: cut_strings(v) for k, v in value.items()}
    return value


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Recorder:
    """The fixtures of this run: a (server, case) seen for the first time starts a new
    file; later exchanges are appended in the order their requests arrived. The file is
    rewritten after each exchange."""

    def __init__(self, out_dir: str, upstreams: dict[str, Upstream]):
        self.out_dir = out_dir
        self.upstreams = upstreams
        self.fixtures: dict[tuple[str, str], dict] = {}
        self.lock = threading.Lock()

    def path(self, server: str, case: str) -> str:
        return os.path.join(self.out_dir, server, case + ".json")

    def begin(self, server: str, case: str, request: dict, note: str | None) -> dict:
        """Reserves the exchange's place; returns it (its response is filled in later)."""
        server_version, model = self.upstreams[server].info()
        exchange = {"request": request, "response": None}
        with self.lock:
            fx = self.fixtures.get((server, case))
            if fx is None:
                fx = {
                    "server": server_version,
                    "model": model,
                    "recorded_at": now_iso(),
                    "note": note or f"{case}: recorded through the recording proxy",
                    "exchanges": [],
                }
                self.fixtures[(server, case)] = fx
            elif note and fx["note"].endswith("recorded through the recording proxy"):
                fx["note"] = note
            fx["exchanges"].append(exchange)
        return exchange

    def finish(self, server: str, case: str) -> None:
        self.write(server, case)

    def set_note(self, server: str, case: str, note: str) -> None:
        with self.lock:
            self.fixtures[(server, case)]["note"] = note
        self.write(server, case)

    def write(self, server: str, case: str) -> None:
        with self.lock:
            fx = self.fixtures[(server, case)]
            done = dict(fx, exchanges=[e for e in fx["exchanges"] if e["response"] is not None])
            text = json.dumps(done, indent=1, ensure_ascii=False) + "\n"
            path = self.path(server, case)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)

    def wait(self, server: str, case: str, timeout: float = 10) -> dict | None:
        """The fixture once its last exchange is complete (a Content-Length body can
        reach the client just before the proxy has seen its end)."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                fx = self.fixtures.get((server, case))
                if fx and fx["exchanges"] and fx["exchanges"][-1]["response"] is not None:
                    return fx
            if time.monotonic() > deadline:
                return fx
            time.sleep(0.02)


# ---------------------------------------------------------------------------------
# The recording proxy


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kodel-fixture-recorder"
    recorder: Recorder  # set on the class by make_proxy

    def log_message(self, fmt, *args):  # quieter than the default
        log("proxy: " + (fmt % args))

    def do_GET(self):
        self.forward()

    def do_POST(self):
        self.forward()

    def do_PUT(self):
        self.forward()

    def do_DELETE(self):
        self.forward()

    def read_request_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply_plain(self, status: int, text: str) -> None:
        data = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def forward(self) -> None:
        rec = self.recorder
        body = self.read_request_body()
        parts = self.path.split("/", 4)  # ['', 'rec', server, case, rest]
        if len(parts) < 5 or parts[1] != "rec" or parts[2] not in rec.upstreams or not CASE_RE.match(parts[3]):
            self.reply_plain(404, "use /rec/<llama-server|llama-cpp-python>/<case>/v1/... (upstreams: "
                             + ", ".join(rec.upstreams) + ")")
            return
        server, case, rest = parts[2], parts[3], "/" + parts[4]
        up = rec.upstreams[server]
        path = up.prefix + rest
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["Accept-Encoding"] = "identity"
        try:
            stored_body = json.loads(body) if body else None
        except ValueError:
            stored_body = body.decode("utf-8", "replace")
        request = {"method": self.command, "path": path, "body": cut_strings(stored_body)}

        # What the server is, asked before the exchange: llama-cpp-python ends a running
        # stream when another request (even GET /v1/models) arrives meanwhile.
        up.info()
        conn = up.connection()
        try:
            t0 = time.perf_counter()
            conn.request(self.command, path, body=body if body or self.command != "GET" else None, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            log(f"proxy: {server} {path}: {e!r}")
            self.reply_plain(502, f"recording proxy: could not reach {server} at {up.base}: {e}")
            return

        exchange = rec.begin(server, case, request, self.headers.get("X-Fixture-Note"))
        content_type = resp.getheader("Content-Type", "")
        chunks: list[str] = []
        ms: list[int] = []
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        # A body whose length is known goes through as it is; any other (a stream) is
        # framed as chunked by this proxy, one HTTP chunk per upstream read.
        length = resp.length if not resp.chunked else None
        framed = length is None
        client_ok = True
        try:
            self.send_response(resp.status, resp.reason)
            if content_type:
                self.send_header("Content-Type", content_type)
            if framed:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(length))
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            self.wfile.flush()
        except OSError:
            client_ok = False
        try:
            while True:
                try:
                    data = resp.read1(65536)
                except http.client.IncompleteRead as e:
                    data = e.partial
                    if not data:
                        log(f"proxy: {server} {case}: upstream body broke off")
                        break
                if not data:
                    break
                elapsed = round((time.perf_counter() - t0) * 1000)
                text = decoder.decode(data)
                if text:
                    chunks.append(text)
                    ms.append(elapsed)
                if client_ok:
                    try:
                        if framed:
                            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
                        else:
                            self.wfile.write(data)
                        self.wfile.flush()
                    except OSError:
                        client_ok = False
                        log(f"proxy: {server} {case}: the client went away; closing the upstream")
                        break
            tail = decoder.decode(b"", final=True)
            if tail:
                chunks.append(tail)
                ms.append(round((time.perf_counter() - t0) * 1000))
            # Recorded before the client sees the end of the body.
            exchange["response"] = {"status": resp.status, "content_type": content_type, "chunks": chunks, "ms": ms}
            rec.finish(server, case)
            if client_ok and framed:
                try:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    pass
        finally:
            conn.close()
            if exchange["response"] is None:
                exchange["response"] = {"status": resp.status, "content_type": content_type, "chunks": chunks, "ms": ms}
                rec.finish(server, case)
        if not client_ok:
            self.close_connection = True


def make_proxy(port: int, recorder: Recorder) -> ThreadingHTTPServer:
    handler = type("Handler", (ProxyHandler,), {"recorder": recorder})
    srv = ThreadingHTTPServer(("127.0.0.1", port), handler)
    srv.daemon_threads = True
    return srv


# ---------------------------------------------------------------------------------
# The direct cases

SYSTEM = "You are a coding agent. Use the tools."
TOOLS = [
    {"type": "function", "function": {
        "name": "read_file", "description": "Read a file.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}},
    {"type": "function", "function": {
        "name": "write_file", "description": "Write a file.",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                       "required": ["path", "content"]}}},
    {"type": "function", "function": {
        "name": "bash", "description": "Run a shell command.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}},
]
HELLO = "Say hello in five words."
CREATE = "Create the file hello.txt containing hi. Use write_file."
COUNT = "Count from 1 to 50."
TEXT_TOOLS_SYSTEM = (
    "You are a coding agent. You can use these tools:\n"
    "- read_file(path): read a file\n"
    "- write_file(path, content): write a file\n"
    "- bash(command): run a shell command\n"
    "To use a tool, answer with only a JSON object like "
    '{"name": "<tool>", "arguments": {...}} inside <tool_call></tool_call> tags, and nothing else.'
)
TEXT_TOOLS_TAGS_SYSTEM = (
    'You call tools by writing <tool_call>{"name": TOOL, "arguments": ARGS}</tool_call>. '
    "Tools: read_file(path), write_file(path, content), bash(command). Always start your answer with <tool_call>."
)
NAMED = {"type": "function", "function": {"name": "write_file"}}
# About 20,000 words (well over a 4,096-token context).
OVERFLOW_TEXT = "Summarise this. " + "The quick brown fox jumps over the lazy dog. " * 2222


def body(messages, *, stream: bool, tools: bool = False, tool_choice=None, system: str | None = SYSTEM, **extra) -> dict:
    b = {"model": "qwen", "messages": ([{"role": "system", "content": system}] if system else []) + messages,
         "temperature": 0, "seed": 1, "stream": stream}
    if stream:
        # What Kodel sends with every streamed request.
        b["stream_options"] = {"include_usage": True}
    if tools:
        b["tools"] = TOOLS
    if tool_choice is not None:
        b["tool_choice"] = tool_choice
    b.update(extra)
    return b


def followup(assistant_content) -> list:
    assistant = {"role": "assistant",
                 "tool_calls": [{"id": "call_1", "type": "function",
                                 "function": {"name": "write_file", "arguments": '{"path":"hello.txt","content":"hi"}'}}]}
    if assistant_content != "absent":
        assistant = {"role": "assistant", "content": assistant_content, **assistant}
    return [{"role": "user", "content": CREATE}, assistant,
            {"role": "tool", "tool_call_id": "call_1", "content": "wrote 2 bytes"}]


USER = lambda text: [{"role": "user", "content": text}]  # noqa: E731

CASES: list[tuple[str, str, dict]] = [
    ("text-stream", "plain text, streamed, stream_options.include_usage",
     body(USER(HELLO), stream=True)),
    ("text", "plain text, not streamed",
     body(USER(HELLO), stream=False)),
    ("tools-stream-no-choice", "tools, streamed, no tool_choice",
     body(USER(CREATE), stream=True, tools=True)),
    ("tools-stream-auto", "tools, streamed, tool_choice auto",
     body(USER(CREATE), stream=True, tools=True, tool_choice="auto")),
    ("tools-auto", "tools, not streamed, tool_choice auto",
     body(USER(CREATE), stream=False, tools=True, tool_choice="auto")),
    # max_tokens: without it llama-server ran to the end of the context (3,810 tokens,
    # 13 minutes, a 660 KB fixture): the model never writes a call the grammar accepts.
    ("tools-stream-required", "tools, streamed, tool_choice required, max_tokens 100",
     body(USER(CREATE), stream=True, tools=True, tool_choice="required", max_tokens=100)),
    ("tools-stream-named", "tools, streamed, tool_choice naming write_file",
     body(USER(CREATE), stream=True, tools=True, tool_choice=NAMED)),
    ("tools-named", "tools, not streamed, tool_choice naming write_file",
     body(USER(CREATE), stream=False, tools=True, tool_choice=NAMED)),
    ("max-completion-tokens", "streamed, max_completion_tokens 8",
     body(USER(COUNT), stream=True, max_completion_tokens=8)),
    ("max-tokens", "streamed, max_tokens 8",
     body(USER(COUNT), stream=True, max_tokens=8)),
    ("followup-no-content", "tool result follow-up, assistant turn with tool_calls and no content key, streamed, auto",
     body(followup("absent"), stream=True, tools=True, tool_choice="auto")),
    ("followup-empty-content", 'tool result follow-up, assistant turn with "content": "", streamed, auto',
     body(followup(""), stream=True, tools=True, tool_choice="auto")),
    ("followup-null-content", 'tool result follow-up, assistant turn with "content": null, streamed, auto',
     body(followup(None), stream=True, tools=True, tool_choice="auto")),
    ("overflow-stream", "a ~20,000-word prompt over the 4,096-token context, streamed, tools",
     body(USER(OVERFLOW_TEXT), stream=True, tools=True, tool_choice="auto")),
    ("overflow", "a ~20,000-word prompt over the 4,096-token context, not streamed, tools",
     body(USER(OVERFLOW_TEXT), stream=False, tools=True, tool_choice="auto")),
    ("text-tool-call", "no tools in the request; the system prompt asks for a JSON tool call in the text, streamed",
     body(USER("Create the file hello.txt containing hi."), stream=True, system=TEXT_TOOLS_SYSTEM)),
    ("text-tool-call-tags", "no tools in the request; the system prompt asks to start with <tool_call>, streamed",
     body(USER("Create the file hello.txt containing hi."), stream=True, system=TEXT_TOOLS_TAGS_SYSTEM)),
]


# ---------------------------------------------------------------------------------
# Reading a recorded response


def sse_events(text: str) -> tuple[list, list[str]]:
    """The JSON payloads of `data:` lines, and the other non-empty lines."""
    events, other = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        if line.startswith("data:"):
            payload = line[5:].strip()
            if payload == "[DONE]":
                events.append("[DONE]")
                continue
            try:
                events.append(json.loads(payload))
            except ValueError:
                other.append(line)
        else:
            other.append(line)
    return events, other


def describe(response: dict) -> dict:
    """What a recorded response says: a dict of facts for the summary line."""
    text = "".join(response["chunks"])
    ct = response["content_type"] or ""
    facts = {"status": response["status"], "ct": ct, "chunks": len(response["chunks"]),
             "ttfc": response["ms"][0] if response["ms"] else None,
             "total": response["ms"][-1] if response["ms"] else None,
             "usage": None, "finish": None, "tool_deltas": [], "content": "", "error": None,
             "done": False, "other": []}
    if "event-stream" in ct:
        events, other = sse_events(text)
        facts["other"] = other
        for ev in events:
            if ev == "[DONE]":
                facts["done"] = True
                continue
            if not isinstance(ev, dict):
                continue
            if ev.get("error"):
                facts["error"] = json.dumps(ev["error"], ensure_ascii=False)
            if ev.get("usage"):
                facts["usage"] = ev["usage"]
            for ch in ev.get("choices") or []:
                if ch.get("finish_reason"):
                    facts["finish"] = ch["finish_reason"]
                delta = ch.get("delta") or {}
                if delta.get("content"):
                    facts["content"] += delta["content"]
                for tc in delta.get("tool_calls") or []:
                    fn = tc.get("function") or {}
                    facts["tool_deltas"].append(
                        (fn.get("name"), "index" in tc, tc.get("index"), tc.get("id"), fn.get("arguments")))
        if other and not events:
            facts["error"] = " ".join(other)[:300]
    else:
        try:
            j = json.loads(text)
        except ValueError:
            facts["error"] = text[:300]
            return facts
        if isinstance(j, dict):
            if j.get("error") or j.get("detail"):
                facts["error"] = json.dumps(j.get("error") or j.get("detail"), ensure_ascii=False)[:300]
            facts["usage"] = j.get("usage")
            for ch in j.get("choices") or []:
                facts["finish"] = ch.get("finish_reason")
                msg = ch.get("message") or {}
                facts["content"] += msg.get("content") or ""
                for tc in msg.get("tool_calls") or []:
                    fn = tc.get("function") or {}
                    facts["tool_deltas"].append(
                        (fn.get("name"), "index" in tc, tc.get("index"), tc.get("id"), fn.get("arguments")))
    return facts


def tool_summary(deltas: list) -> str:
    if not deltas:
        return "none"
    names = [d[0] or "-" for d in deltas]
    runs: list[list] = []
    for n in names:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    seq = " ".join(f"{n}x{c}" if c > 1 else n for n, c in runs)
    idx = "index" if all(d[1] for d in deltas) else ("some index" if any(d[1] for d in deltas) else "no index")
    ids = sorted({d[3] for d in deltas if d[3]})
    args = "".join(d[4] or "" for d in deltas)
    return f"[{seq}] {idx}, ids={ids or 'none'}, args={args[:80]!r}"


def summary_line(server: str, case: str, response: dict) -> str:
    f = describe(response)
    usage = f["usage"]
    u = (f"usage {usage.get('prompt_tokens')}+{usage.get('completion_tokens')}" if isinstance(usage, dict) else "no usage")
    parts = [f"{case:24} {server:16} {f['status']} {f['ct'] or '-'}", f"{f['chunks']} chunks", u,
             f"finish={f['finish']}", f"tools={tool_summary(f['tool_deltas'])}",
             f"first {f['ttfc']} ms, total {f['total']} ms"]
    if f["content"]:
        parts.append(f"text={f['content'][:70]!r}")
    if f["error"]:
        parts.append(f"error={f['error'][:200]}")
    if "event-stream" in f["ct"] and not f["done"]:
        parts.append("no [DONE]")
    return " | ".join(parts)


def observed(response: dict) -> str:
    f = describe(response)
    bits = [str(f["status"])]
    if f["error"]:
        bits.append("error " + f["error"][:120])
    if "event-stream" in f["ct"]:
        bits.append(f"{f['chunks']} chunks" + ("" if f["done"] else " without [DONE]"))
    bits.append("usage" if f["usage"] else "no usage")
    if f["finish"]:
        bits.append(f"finish_reason {f['finish']}")
    names = [d[0] for d in f["tool_deltas"] if d[0]]
    if names:
        bits.append(f"tool call {names[0]}")
    return ", ".join(bits)


# ---------------------------------------------------------------------------------
# Running the cases


def send_through_proxy(port: int, server: str, case: str, req_body: dict, note: str) -> bytes:
    data = json.dumps(req_body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    try:
        conn.request("POST", f"/rec/{server}/{case}/v1/chat/completions", body=data,
                     headers={"Content-Type": "application/json",
                              "Accept": "text/event-stream" if req_body.get("stream") else "application/json",
                              "X-Fixture-Note": note})
        resp = conn.getresponse()
        return resp.read()
    finally:
        conn.close()


def run_cases(args, recorder: Recorder, port: int) -> int:
    wanted = set(args.only.split(",")) if args.only else None
    unknown = (wanted or set()) - {c[0] for c in CASES}
    if unknown:
        log(f"unknown case(s): {', '.join(sorted(unknown))}; cases: {', '.join(c[0] for c in CASES)}")
        return 2
    mismatches = 0
    for case, what, req_body in CASES:
        if wanted and case not in wanted:
            continue
        for server in recorder.upstreams:
            log(f"recording {server}/{case} ...")
            try:
                got = send_through_proxy(port, server, case, req_body, f"{case}: {what}")
            except (OSError, http.client.HTTPException) as e:
                log(f"  {server}/{case}: the proxied request failed: {e!r}")
                mismatches += 1
                continue
            fx = recorder.wait(server, case)
            if fx is None or not fx["exchanges"]:
                log(f"  {server}/{case}: nothing recorded (answer: {got[:200]!r})")
                mismatches += 1
                continue
            response = fx["exchanges"][-1]["response"]
            if "".join(response["chunks"]).encode() != got.decode("utf-8", "replace").encode():
                log(f"  {server}/{case}: the client got other bytes than were recorded")
                mismatches += 1
            recorder.set_note(server, case, f"{case}: {what} -> {observed(response)}")
            print(summary_line(server, case, response), flush=True)
    return 1 if mismatches else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-server", metavar="URL", help="llama-server base URL, with /v1")
    p.add_argument("--llama-cpp-python", metavar="URL", help="llama-cpp-python base URL, with /v1")
    p.add_argument("--out", default=os.path.join(ROOT, "kodel-testkit", "fixtures", "llm"),
                   help="fixture directory (default: kodel-testkit/fixtures/llm)")
    p.add_argument("--proxy-port", type=int, default=18090)
    p.add_argument("--only", metavar="CASE", help="record only this case (comma-separated for several)")
    p.add_argument("--serve-proxy", action="store_true", help="only run the recording proxy, until killed")
    args = p.parse_args()

    upstreams = {}
    if args.llama_server:
        upstreams["llama-server"] = Upstream("llama-server", args.llama_server)
    if args.llama_cpp_python:
        upstreams["llama-cpp-python"] = Upstream("llama-cpp-python", args.llama_cpp_python)
    if not upstreams:
        p.error("give --llama-server URL and/or --llama-cpp-python URL")

    recorder = Recorder(os.path.abspath(args.out), upstreams)
    proxy = make_proxy(args.proxy_port, recorder)
    log(f"recording proxy on http://127.0.0.1:{args.proxy_port}/rec/<{'|'.join(upstreams)}>/<case>/v1/...; "
        f"fixtures in {recorder.out_dir}")
    if args.serve_proxy:
        # Every exchange is already written when it ends; SIGTERM just stops.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            proxy.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            proxy.server_close()
        return 0
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        return run_cases(args, recorder, args.proxy_port)
    finally:
        proxy.shutdown()
        proxy.server_close()


if __name__ == "__main__":
    sys.exit(main())
