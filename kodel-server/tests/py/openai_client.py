"""Kodel's /v1/chat/completions through the official OpenAI Python client.

Reads OPENAI_BASE_URL and OPENAI_API_KEY (a Kodel API token) from the environment,
prints one JSON object with what the client saw.
"""
import json
import sys

import openai

client = openai.OpenAI(max_retries=0, timeout=30)
out = {}

# Not streamed.
r = client.chat.completions.create(
    model="openai/gpt-test",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}],
)
out["plain"] = {
    "content": r.choices[0].message.content,
    "finish_reason": r.choices[0].finish_reason,
    "prompt_tokens": r.usage.prompt_tokens,
    "completion_tokens": r.usage.completion_tokens,
}

# Streamed, with a tool call and usage in the last chunk.
tools = [{"type": "function", "function": {"name": "read_file", "description": "Read a file",
          "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}]
stream = client.chat.completions.create(
    model="gpt-test",
    messages=[{"role": "user", "content": "Read the readme"}],
    tools=tools,
    stream=True,
    stream_options={"include_usage": True},
)
calls, finish, usage, chunks = {}, None, None, 0
for chunk in stream:
    chunks += 1
    if chunk.usage:
        usage = chunk.usage.total_tokens
    for choice in chunk.choices:
        for tc in choice.delta.tool_calls or []:
            c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                c["id"] = tc.id
            if tc.function and tc.function.name:
                c["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                c["arguments"] += tc.function.arguments
        if choice.finish_reason:
            finish = choice.finish_reason
out["stream"] = {"calls": list(calls.values()), "finish_reason": finish, "total_tokens": usage, "chunks": chunks}

# A provider error surfaces as the client's own exception.
try:
    client.chat.completions.create(model="openai/gpt-test", messages=[{"role": "user", "content": "fail"}])
    out["error"] = None
except openai.APIStatusError as e:
    out["error"] = {"status": e.status_code, "message": str(e)}

json.dump(out, sys.stdout)
