"""Runs Kodel's ClickHouse DDL and usage report queries on current ClickHouse (chdb).

Reads {"migrations": [sql...], "reports": {group: sql}, "org": id, "from": s, "to": s}
on stdin; inserts a few calls (one of them twice, as a re-shipped batch would); prints
{group: [[key, calls, errors, tokens_in, tokens_out, tokens_cached, cost_micros,
unpriced_calls], ...]} sorted by key.
"""
import json
import sys
import tempfile

from chdb import session

spec = json.load(sys.stdin)
with tempfile.TemporaryDirectory() as path:
    s = session.Session(path)
    s.query("CREATE DATABASE IF NOT EXISTS kodel")
    s.query("USE kodel")
    for sql in spec["migrations"]:
        s.query(sql)
    org = spec["org"]
    rows = [
        # id, at, project, task, model, user, agent, in, out, cached, cost, priced, status
        (1, spec["from"] + 10, "p1", "t1", "gpt-4o", "u1", "", 100, 10, 0, 350, 1, "ok"),
        (2, spec["from"] + 90000, "p1", "t2", "gpt-4o", "", "a1", 200, 20, 50, 700, 1, "error"),
        (2, spec["from"] + 90000, "p1", "t2", "gpt-4o", "", "a1", 200, 20, 50, 700, 1, "error"),
        (3, spec["from"] + 90001, "p2", "t3", "mine", "u1", "", 300, 30, 0, 0, 0, "ok"),
        (4, spec["to"] + 5, "p2", "t3", "gpt-4o", "u1", "", 999, 9, 0, 9, 1, "ok"),
    ]
    for (i, at, p, t, m, u, a, tin, tout, tc, cost, priced, status) in rows:
        s.query(
            "INSERT INTO llm_calls VALUES "
            f"({i}, {at}, '{org}', 'acme', '{p}', '{t}', 'j', '{a}', '{u}', 'openai', '{m}', {tin}, {tout}, {tc}, 0, "
            f"{cost}, {priced}, NULL, 10, '{status}', '')"
        )
    s.query("INSERT INTO job_events VALUES (1, 1, 'o', 'acme', 'p', 't', 'j', 'a', 'implement', 'job.created', 'pending', 0, NULL, 0)")
    out = {}
    for group, sql in spec["reports"].items():
        for value in [f"'{org}'", str(spec["from"]), str(spec["to"])]:
            sql = sql.replace("?", value, 1)
        result = s.query(sql + " FORMAT JSONCompact")
        data = json.loads(str(result))["data"]
        out[group] = sorted([[str(c) for c in row] for row in data])
    print(json.dumps(out))
