"""Drives a running serve-local with the official `openai` Python client.

Usage: python openai_client.py BASE_URL MODEL_ID. Exits non-zero (with the failed check) if
the server does not behave as the client expects.
"""
import sys

import openai
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
checks = []


def check(name, cond, detail=""):
    checks.append(name)
    if not cond:
        sys.exit(f"FAILED {name}: {detail}")


ids = [m.id for m in client.models.list().data]
check("models lists the served model", model in ids, ids)

c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
check("completion text", len(c.choices[0].text) > 0 and c.choices[0].finish_reason == "length", c)
check("completion usage", c.usage.completion_tokens == 8 and c.usage.prompt_tokens > 0, c.usage)

e = client.completions.create(model=model, prompt="The quick brown fox", max_tokens=1, temperature=0, logprobs=1, echo=True)
lp = e.choices[0].logprobs
check("echo returns the prompt", e.choices[0].text.startswith("The quick brown fox"), e.choices[0].text)
check("echo logprobs cover prompt and output",
      len(lp.token_logprobs) == e.usage.prompt_tokens + 1 and lp.token_logprobs[0] is None
      and all(x <= 0 for x in lp.token_logprobs[1:]), lp.token_logprobs)
check("greedy token is its own top-1", lp.token_logprobs[-1] == max(lp.top_logprobs[-1].values()), lp)

full = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0).choices[0].text
s = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[" 7"])
check("stop sequence", s.choices[0].finish_reason == "stop" and s.choices[0].text == full[: full.index(" 7")],
      (full, s.choices[0].text))

a, b = (client.completions.create(model=model, prompt="My favourite food is", max_tokens=16, temperature=1.0,
                                  seed=42).choices[0].text for _ in range(2))
check("seeded sampling reproducible", a == b, (a, b))

msgs = [{"role": "user", "content": "What is the capital of France?"}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=40, temperature=0)
whole = r.choices[0].message.content
check("chat answer", "Paris" in whole and r.choices[0].message.role == "assistant", whole)

parts, finish, usage = [], None, None
for chunk in client.chat.completions.create(model=model, messages=msgs, max_tokens=40, temperature=0, stream=True,
                                            stream_options={"include_usage": True}):
    if chunk.usage is not None:
        usage = chunk.usage
    for ch in chunk.choices:
        if ch.delta.content:
            parts.append(ch.delta.content)
        finish = ch.finish_reason or finish
check("chat stream equals the whole answer", "".join(parts) == whole, ("".join(parts), whole))
check("chat stream finish and usage", finish == r.choices[0].finish_reason and usage is not None
      and usage.completion_tokens == r.usage.completion_tokens, (finish, usage))

text = "".join(c.choices[0].text for c in client.completions.create(
    model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True))
check("completion stream equals the whole completion", text == c.choices[0].text, (text, c.choices[0].text))

lp = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0, logprobs=True,
                                    top_logprobs=3).choices[0].logprobs
check("chat logprobs", len(lp.content) >= 1 and len(lp.content[0].top_logprobs) == 3, lp)

try:
    client.completions.create(model=model, prompt="x", max_tokens=10**6)
    check("context overflow is a 400", False)
except openai.BadRequestError as err:
    check("context overflow is a 400", "context" in str(err), err)
try:
    client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    check("unknown model is a 404", False)
except openai.NotFoundError:
    check("unknown model is a 404", True)

print(f"ok: {len(checks)} checks")
