#!/usr/bin/env python3
"""`weft serve` against the official `openai` Python client.

Usage: openai_client_test.py BASE_URL API_KEY MODEL [BUSY_URL]
(`scripts/serve-client-test.sh` starts the servers and runs this.) BUSY_URL
is a server started with `--max-concurrent-requests 1` and no key.
Every check raises on failure; the exit status is 0 only if all pass.
"""
import sys
import urllib.request

import openai

base, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
busy = sys.argv[4] if len(sys.argv) > 4 else None
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
checks = []


def check(name):
    def wrap(f):
        checks.append((name, f))
        return f
    return wrap


@check("models")
def _():
    ids = [m.id for m in client.models.list().data]
    assert ids == [model], ids
    assert client.models.retrieve(model).id == model


@check("completion, greedy")
def _():
    r = client.completions.create(model=model, prompt="The capital of France is",
                                  max_tokens=8, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text.startswith(" Paris."), r.choices[0].text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens == 5, r.usage


@check("completion, streamed = whole")
def _():
    kw = dict(model=model, prompt="The capital of France is", max_tokens=12, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    parts, finish = [], None
    for chunk in client.completions.create(stream=True, **kw):
        for c in chunk.choices:
            parts.append(c.text)
            finish = c.finish_reason or finish
    assert "".join(parts) == whole, (parts, whole)
    assert finish == "length"


@check("chat, whole and streamed, with include_usage")
def _():
    kw = dict(model=model, messages=[{"role": "user", "content": "Name a color."}],
              max_tokens=16, temperature=0)
    whole = client.chat.completions.create(**kw)
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    text, usage = [], None
    for chunk in client.chat.completions.create(stream=True,
                                                stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            assert chunk.choices == [], chunk
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text.append(c.delta.content)
    assert "".join(text) == whole.choices[0].message.content
    assert usage is not None and usage.total_tokens == whole.usage.total_tokens, usage


@check("n=2 with a seed: distinct, reproducible")
def _():
    kw = dict(model=model, messages=[{"role": "user", "content": "Write a word."}],
              max_tokens=12, temperature=1.0, seed=5, n=2)
    a = [c.message.content for c in client.chat.completions.create(**kw).choices]
    b = [c.message.content for c in client.chat.completions.create(**kw).choices]
    assert len(a) == 2 and a == b, (a, b)
    assert a[0] != a[1], a


@check("stop strings")
def _():
    full = client.completions.create(model=model, prompt="Count: 1, 2, 3,", max_tokens=20,
                                     temperature=0).choices[0].text
    stop = full[len(full) // 2:][:3]
    r = client.completions.create(model=model, prompt="Count: 1, 2, 3,", max_tokens=20,
                                  temperature=0, stop=[stop, "never-written"])
    assert r.choices[0].text == full[:full.index(stop)], (r.choices[0].text, full, stop)
    assert r.choices[0].finish_reason == "stop"


@check("logprobs: completions and chat")
def _():
    r = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4,
                                  temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text, lp
    assert len(lp.token_logprobs) == 4 and all(x <= 0 for x in lp.token_logprobs), lp
    assert all(len(d) <= 2 for d in lp.top_logprobs), lp
    c = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=3, logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == 3 and len(content[0].top_logprobs) == 2, content
    assert "".join(t.token for t in content) == c.choices[0].message.content


@check("400: a value out of range names the field")
def _():
    try:
        client.completions.create(model=model, prompt="x", top_p=5)
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.body["param"] == "top_p", e.body
    else:
        raise AssertionError("top_p=5 was accepted")


@check("400: context overflow")
def _():
    try:
        client.completions.create(model=model, prompt="x", max_tokens=10**6)
    except openai.BadRequestError as e:
        assert "context" in e.body["message"], e.body
    else:
        raise AssertionError("max_tokens=10**6 was accepted")


@check("401: a wrong API key")
def _():
    bad = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
    except openai.AuthenticationError as e:
        assert e.status_code == 401
    else:
        raise AssertionError("a wrong key was accepted")


@check("404: an unknown model")
def _():
    try:
        client.completions.create(model="gpt-4", prompt="x")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.body["param"] == "model", e.body
    else:
        raise AssertionError("an unknown model was accepted")


@check("503 with Retry-After when the server is full")
def _():
    if busy is None:
        raise AssertionError("no BUSY_URL given")
    full = openai.OpenAI(base_url=f"{busy}/v1", api_key="none", max_retries=0)
    stream = full.completions.create(model=model, prompt="Once upon a time", max_tokens=2000,
                                     temperature=0, stream=True, extra_body={"ignore_eos": True})
    try:
        next(iter(stream))
        try:
            full.completions.create(model=model, prompt="x", max_tokens=1)
        except openai.APIStatusError as e:
            assert e.status_code == 503, e
            assert e.response.headers.get("retry-after"), dict(e.response.headers)
            assert e.body["message"], e.body
        else:
            raise AssertionError("a second request was accepted past the limit")
    finally:
        stream.close()


@check("a forced fork carries its tree in the weft extension")
def _():
    prompt = ("Question: how far apart are (1, 2) and (7, -7)?\n<Parallel>\n<Outlines>\n"
              "<Outline>1: Compute (dx)^2.</Outline>\n<Outline>2: Compute (dy)^2.</Outline>\n"
              "<Outline>3: Add them.</Outline>\n</Outlines>")
    r = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0,
                                  extra_body={"parallel": {"protocol": "threadweaver"}})
    weft = r.choices[0].model_extra["weft"]
    assert weft["protocol"] == "threadweaver"
    assert len(weft["threads"]) >= 4 and weft["stats"]["forks"] >= 1, weft
    assert [t["parent"] for t in weft["threads"][1:4]] == [0, 0, 0], weft["threads"]


@check("a forced-fork chat request (an assistant prefill left open) holds its tree")
def _():
    outlines = ("<Parallel>\n<Outlines>\n<Outline>1: Compute (dx)^2.</Outline>\n"
                "<Outline>2: Compute (dy)^2.</Outline>\n<Outline>3: Add them.</Outline>\n"
                "</Outlines>")
    r = client.chat.completions.create(
        model=model, max_tokens=16, temperature=0,
        messages=[{"role": "user", "content": "How far apart are (1, 2) and (7, -7)?"},
                  {"role": "assistant", "content": outlines}],
        extra_body={"parallel": {"protocol": "threadweaver"},
                    "continue_final_message": True, "add_generation_prompt": False})
    weft = r.choices[0].model_extra["weft"]
    assert weft["stats"]["forks"] == 1, weft["stats"]
    assert [t["parent"] for t in weft["threads"][1:4]] == [0, 0, 0], weft["threads"]
    assert len(weft["threads"]) == 4, weft["threads"]
    assert r.choices[0].finish_reason in ("stop", "length"), r.choices[0]
    assert "<Thread>" in r.choices[0].message.content, r.choices[0].message.content


@check("a forced-fork stream: standard chunks only, the text adds up")
def _():
    prompt = ("Question: how far apart are (1, 2) and (7, -7)?\n<Parallel>\n<Outlines>\n"
              "<Outline>1: Compute (dx)^2.</Outline>\n<Outline>2: Compute (dy)^2.</Outline>\n"
              "</Outlines>")
    kw = dict(model=model, prompt=prompt, max_tokens=12, temperature=0,
              extra_body={"parallel": {"protocol": "threadweaver"}})
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(stream=True, **kw))
    assert all(c.choices for c in chunks), chunks
    assert "".join(c.choices[0].text for c in chunks) == whole, (chunks, whole)
    assert "<Thread>" in whole, whole
    # Asked for, the tree comes as events named weft.thread. This client
    # does not skip named events: it yields them as chunks without choices
    # (hence opt-in).
    extra = dict(kw["extra_body"], stream_options={"include_threads": True})
    tree = list(client.completions.create(stream=True, **dict(kw, extra_body=extra)))
    assert any(c.choices is None for c in tree), tree
    text = "".join(c.choices[0].text for c in tree if c.choices)
    assert text == whole, (text, whole)


@check("a client that disconnects mid-stream: KV back at idle in /metrics")
def _():
    import time
    stream = client.completions.create(model=model, prompt="Once upon a time", max_tokens=4000,
                                       temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    for i, _chunk in enumerate(stream):
        if i == 3:
            break
    stream.close()
    for _ in range(200):
        metrics = urllib.request.urlopen(f"{base}/metrics").read().decode()
        values = {l.split()[0]: float(l.split()[1]) for l in metrics.splitlines()
                  if l.startswith("weft:") and "{" not in l}
        if values.get("weft:kv_cache_usage_perc") == 0 and values.get("weft:num_requests_running") == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"KV not back at idle: {values}")


failed = 0
for name, f in checks:
    try:
        f()
        print(f"ok    {name}")
    except Exception as e:  # noqa: BLE001 - report every failure, then exit 1
        failed += 1
        print(f"FAIL  {name}: {type(e).__name__}: {e}")
print(f"{len(checks) - failed} passed, {failed} failed (openai {openai.__version__})")
sys.exit(1 if failed else 0)
