#!/usr/bin/env python3
"""Time to first token of a real model server, asked directly and through Kodel's
OpenAI-compatible gateway, in turns (docs/benchmarks.md, "Local models").

    bench-local-ttft.py --direct http://127.0.0.1:18080/v1 \
        --kodel http://127.0.0.1:7791/v1 --token kodel_pat_... [--n 20]

Each round sends the same streamed request to both, one after the other (the order
alternates), and times the first non-empty content delta. Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
import urllib.parse


def first_token_ms(base: str, token: str | None, model: str, prompt: str) -> float:
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=600)
    body = json.dumps({"model": model, "stream": True, "max_tokens": 16, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]})
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    conn.request("POST", url.path.rstrip("/") + "/chat/completions", body=body, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"{base}: HTTP {resp.status}: {resp.read()[:300]!r}")
    first = None
    buf = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            data = event.decode().removeprefix("data: ").strip()
            if first is None and data.startswith("{"):
                for c in json.loads(data).get("choices", []):
                    if (c.get("delta") or {}).get("content"):
                        first = (time.perf_counter() - started) * 1000
    conn.close()
    if first is None:
        raise SystemExit(f"{base}: no content in the answer")
    return first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--direct", required=True)
    p.add_argument("--kodel", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--direct-model", default="local")
    p.add_argument("--kodel-model", default="openai/local")
    p.add_argument("--n", type=int, default=20)
    args = p.parse_args()
    prompt = "Write one sentence about tests."
    direct, kodel = [], []
    first_token_ms(args.direct, None, args.direct_model, prompt)  # warm the prompt cache
    for i in range(args.n):
        pair = [(direct, args.direct, None, args.direct_model), (kodel, args.kodel, args.token, args.kodel_model)]
        for out, base, token, model in pair if i % 2 == 0 else reversed(pair):
            out.append(first_token_ms(base, token, model, prompt))
    for name, xs in (("direct", direct), ("through Kodel", kodel)):
        xs.sort()
        print(f"{name:14} n={len(xs)} p50={statistics.median(xs):.1f} ms min={xs[0]:.1f} max={xs[-1]:.1f}")
    print(f"added by Kodel: p50 {statistics.median(kodel) - statistics.median(direct):.1f} ms")


if __name__ == "__main__":
    main()
