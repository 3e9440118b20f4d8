#!/usr/bin/env python3
"""A load test of `weft serve` through the official `openai` Python client.

Usage: load_test.py BASE_URL PID [--clients 32] [--seconds 60]
(`scripts/load-test.sh` starts the server and runs this.) BASE_URL must be
on 127.0.0.1; PID is the server's process, whose RSS is read from /proc.

Each client thread loops until the time is up, one streamed request at a
time: plain completions (short stories), ThreadWeaver forced forks
(`parallel: {protocol: threadweaver}` on a prompt that ends in its
outlines) and plain chat, with a seed each; one request in ten reads 2-3
chunks, then closes the stream (a client that disconnects mid-stream). The
first 10 s (1/6 of a shorter run) are warm-up: the server's RSS is read at
their end, and again once every client has stopped and /metrics shows the
KV cache idle.

Checks: no request failed (5xx, any other status, a connection error or
60 s without a byte, an error in the stream, a stream without a finish
reason); the KV cache is back at idle (kv_cache_usage_perc 0,
num_requests_running 0) within 10 s; RSS at the end is at most 10% above
the post-warm-up RSS; every completed forking request forked (forks_total
at least their number); every client stopped within 150 s of the end. It
prints a summary (TTFT: to the first chunk with text, of every request
that got one) and exits 1 if any check fails.
"""
import argparse
import random
import sys
import threading
import time
import urllib.parse
import urllib.request

import openai

MODEL = "smollm2"
DISCONNECT_RATE = 0.10
IDLE_WAIT_S = 10.0
RSS_TOLERANCE = 0.10
REQUEST_TIMEOUT_S = 60.0  # per read: the server sends an SSE comment every 5 s while a forked root is silent
DRAIN_S = 150.0  # after the load, the longest the clients may take to finish

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("url")
p.add_argument("pid", type=int)
p.add_argument("--clients", type=int, default=32)
p.add_argument("--seconds", type=float, default=60.0)
args = p.parse_args()
base = args.url.rstrip("/")
parsed = urllib.parse.urlparse(base)
if parsed.scheme != "http" or parsed.hostname != "127.0.0.1":
    sys.exit(f"refusing {base!r}: the load test only runs against http://127.0.0.1")
if args.clients < 1 or args.seconds <= 0:
    sys.exit("--clients and --seconds must be positive")
warmup_s = min(10.0, args.seconds / 6)


# --- the server: RSS and /metrics ------------------------------------------

def rss_mib():
    """The server's VmRSS in MiB (None if the process is gone)."""
    try:
        with open(f"/proc/{args.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def fmt(mib):
    return "gone" if mib is None else f"{mib:.1f} MiB"


def metrics():
    """(unlabelled `weft:` values, `weft:request_success_total` by finished_reason)."""
    text = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
    values, finished = {}, {}
    for line in text.splitlines():
        if not line.startswith("weft:"):
            continue
        if "{" not in line:
            values[line.split()[0]] = float(line.split()[1])
        elif line.startswith("weft:request_success_total{"):
            labels, value = line.rsplit(None, 1)
            reason = labels.split('finished_reason="', 1)[1].split('"', 1)[0]
            finished[reason] = finished.get(reason, 0) + int(float(value))
    return values, finished


# --- the requests ------------------------------------------------------------

STORY_STARTS = [
    "Once upon a time, a {a} who lived in {p}",
    "The {a} woke up early in {p} and",
    "Long ago, in {p}, there was a {a} that",
    "Every morning the little {a} walked through {p}, until one day",
    "Write a short story about a {a} in {p}.\n\nStory:",
]
ANIMALS = ["fox", "robot", "dragon", "cat", "sailor", "owl", "baker", "turtle"]
PLACES = ["a quiet village", "the forest", "a big city", "the mountains",
          "a lighthouse", "the desert", "an old castle"]
CHAT_ASKS = ["Name a color and say why you like it.", "Tell me a fact about {a}s.",
             "Give me a tip for visiting {p}.", "Write one sentence about a {a}.",
             "What is {x} plus {y}?"]


def story(rng):
    return rng.choice(STORY_STARTS).format(a=rng.choice(ANIMALS), p=rng.choice(PLACES))


def fork_prompt(rng):
    """A ThreadWeaver prompt that ends in its outlines (2 to 4): a forced fork."""
    n = rng.randint(2, 4)
    if rng.random() < 0.5:
        x1, y1, x2, y2 = (rng.randint(-9, 9) for _ in range(4))
        question = f"how far apart are ({x1}, {y1}) and ({x2}, {y2})?"
        steps = ["Compute (dx)^2.", "Compute (dy)^2.", "Add them.", "Take the square root."]
    else:
        a, b, c, d = (rng.randint(2, 99) for _ in range(4))
        question = f"what is {a} * {b} + {c} * {d}?"
        steps = [f"Compute {a} * {b}.", f"Compute {c} * {d}.", "Add the two products.",
                 "Check the sum."]
    outlines = "".join(f"<Outline>{i + 1}: {s}</Outline>\n" for i, s in enumerate(steps[:n]))
    return f"Question: {question}\n<Parallel>\n<Outlines>\n{outlines}</Outlines>"


def start(client, rng, kind, max_tokens):
    """Send one streamed request of `kind`; the stream once its headers came."""
    common = dict(model=MODEL, max_tokens=max_tokens, temperature=0.7,
                  seed=rng.randrange(2**31), stream=True,
                  stream_options={"include_usage": True})
    if kind == "plain":
        return client.completions.create(prompt=story(rng), **common)
    if kind == "fork":
        return client.completions.create(prompt=fork_prompt(rng), **common,
                                         extra_body={"parallel": {"protocol": "threadweaver"}})
    ask = rng.choice(CHAT_ASKS).format(a=rng.choice(ANIMALS), p=rng.choice(PLACES),
                                       x=rng.randint(1, 99), y=rng.randint(1, 99))
    return client.chat.completions.create(messages=[{"role": "user", "content": ask}], **common)


def chunk_text(kind, chunk):
    if not chunk.choices:
        return "", None
    c = chunk.choices[0]
    text = (c.delta.content if kind == "chat" else c.text) or ""
    return text, c.finish_reason


def one_request(client, rng, kind, t_start):
    """Run one request; its record (dict)."""
    disconnect_after = rng.choice([2, 3]) if rng.random() < DISCONNECT_RATE else None
    r = dict(kind=kind, t=t_start, ttft=None, chunks=0, tokens=0, finish=None,
             outcome="completed", status="2xx", error=None, max_tokens=rng.randint(32, 64))
    t0 = time.monotonic()
    stream = None
    try:
        stream = start(client, rng, kind, r["max_tokens"])
        for chunk in stream:
            if chunk.usage is not None:
                r["tokens"] = chunk.usage.completion_tokens
            text, finish = chunk_text(kind, chunk)
            r["finish"] = finish or r["finish"]
            if text:
                r["chunks"] += 1
                if r["ttft"] is None:
                    r["ttft"] = time.monotonic() - t0
            if disconnect_after and r["chunks"] >= disconnect_after and not r["finish"]:
                stream.close()
                r["outcome"] = "disconnected"
                break
        if r["outcome"] == "completed" and r["finish"] is None:
            r.update(outcome="failed", error="the stream ended without a finish_reason")
    except openai.APIStatusError as e:
        klass = f"{e.status_code // 100}xx"
        r.update(outcome="failed", status=klass, error=f"{e.status_code}: {e.body}")
    except openai.APIConnectionError as e:
        r.update(outcome="failed", status="conn", error=f"{type(e).__name__}: {e!r}")
    except Exception as e:  # noqa: BLE001 - an error event in the stream, a broken body
        r.update(outcome="failed", status="stream", error=f"{type(e).__name__}: {e}")
    finally:
        if stream is not None:
            stream.close()
    if r["finish"] == "error" and r["outcome"] == "completed":
        r.update(outcome="failed", error="finish_reason error")
    return r


KINDS = ["plain"] * 8 + ["fork"] * 8 + ["chat"] * 4  # about half and half, some chat
records, records_lock = [], threading.Lock()


def client_loop(i, t_begin, deadline):
    rng = random.Random(i)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0,
                           timeout=REQUEST_TIMEOUT_S)
    try:
        while time.monotonic() < deadline:
            r = one_request(client, rng, rng.choice(KINDS), time.monotonic() - t_begin)
            with records_lock:
                records.append(r)
            if r["outcome"] == "failed" and r["status"] == "conn":
                time.sleep(0.2)  # the server may be gone: do not spin
    finally:
        client.close()


# --- the run -----------------------------------------------------------------

if rss_mib() is None:
    sys.exit(f"no process {args.pid} (or no VmRSS in /proc/{args.pid}/status)")
print(f"load test: {args.clients} clients, {args.seconds:g} s (warm-up {warmup_s:g} s) "
      f"against {base}, openai {openai.__version__}", flush=True)
t_begin = time.monotonic()
deadline = t_begin + args.seconds
threads = [threading.Thread(target=client_loop, args=(i, t_begin, deadline), daemon=True)
           for i in range(args.clients)]
for t in threads:
    t.start()
time.sleep(max(0.0, t_begin + warmup_s - time.monotonic()))
rss_warm = rss_mib()
print(f"warm-up over: RSS {fmt(rss_warm)}, {len(records)} requests done", flush=True)
for t in threads:
    t.join(max(0.0, deadline + DRAIN_S - time.monotonic()))
hung = sum(t.is_alive() for t in threads)  # daemons: they end with this process
with records_lock:
    final = list(records)
load_s = time.monotonic() - t_begin

idle, values, finished = False, {}, {}
t_idle = time.monotonic()
while True:
    try:
        values, finished = metrics()
    except OSError as e:
        values = {"error": repr(e)}
    if (values.get("weft:kv_cache_usage_perc") == 0
            and values.get("weft:num_requests_running") == 0):
        idle = True
        break
    if time.monotonic() - t_idle > IDLE_WAIT_S:
        break
    time.sleep(0.1)
idle_after = time.monotonic() - t_idle
rss_end = rss_mib()


# --- the summary -------------------------------------------------------------

def pct(xs, q):
    """The q-th percentile (linear between closest ranks)."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def count(rs, **kw):
    return sum(all(r[k] == v for k, v in kw.items()) for r in rs)


failed = [r for r in final if r["outcome"] == "failed"]
completed = count(final, outcome="completed")
disconnected = count(final, outcome="disconnected")
statuses = {}
for r in final:
    statuses[r["status"]] = statuses.get(r["status"], 0) + 1
chunks = sum(r["chunks"] for r in final)
tokens = sum(r["tokens"] for r in final)
forks = values.get("weft:forks_total", 0)
forks_done = count(final, kind="fork", outcome="completed")

W = 18
print(f"\n{'requests':<{W}}total {len(final)}  completed {completed}  "
      f"disconnected {disconnected}  failed {len(failed)}  "
      f"({len(final) / load_s:.1f}/s over {load_s:.1f} s)")
for kind in ("plain", "fork", "chat"):
    print(f"{'  ' + kind:<{W}}{count(final, kind=kind)} sent, "
          f"{count(final, kind=kind, outcome='completed')} completed, "
          f"{count(final, kind=kind, outcome='disconnected')} disconnected, "
          f"{count(final, kind=kind, outcome='failed')} failed")
print(f"{'status classes':<{W}}" + "  ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
print(f"{'TTFT ms':<{W}}{'p50':>8}{'p99':>8}{'max':>8}{'n':>7}")
for label, kinds in (("all", ("plain", "fork", "chat")), ("plain", ("plain",)),
                     ("fork", ("fork",)), ("chat", ("chat",))):
    xs = [r["ttft"] * 1e3 for r in final if r["kind"] in kinds and r["ttft"] is not None]
    print(f"{'  ' + label:<{W}}{pct(xs, 50):8.0f}{pct(xs, 99):8.0f}"
          f"{max(xs, default=float('nan')):8.0f}{len(xs):7}")
print(f"{'throughput':<{W}}{chunks} text chunks ({chunks / load_s:.1f}/s), "
      f"{tokens} completion tokens in usage ({tokens / load_s:.1f}/s, completed requests)")
over = [r for r in final if r["tokens"] > r["max_tokens"]]
if over:
    worst = max(over, key=lambda r: r["tokens"])
    print(f"{'over max_tokens':<{W}}{len(over)} requests' usage exceeded max_tokens "
          f"({', '.join(sorted({r['kind'] for r in over}))}; worst {worst['tokens']} "
          f"for max_tokens {worst['max_tokens']})")
print(f"{'server /metrics':<{W}}forks_total {forks:g}  request_success_total "
      + " ".join(f"{k}={v}" for k, v in sorted(finished.items()))
      + f"  generation_tokens_total {values.get('weft:generation_tokens_total', 0):g}")
print(f"{'KV at end':<{W}}kv_cache_usage_perc {values.get('weft:kv_cache_usage_perc')}  "
      f"num_requests_running {values.get('weft:num_requests_running')}  "
      f"num_requests_waiting {values.get('weft:num_requests_waiting')}  "
      f"live_threads {values.get('weft:live_threads')}  ({idle_after:.1f} s after the load)")
ratio = rss_end / rss_warm if rss_warm and rss_end else float("nan")
print(f"{'RSS':<{W}}after warm-up {fmt(rss_warm)}  end {fmt(rss_end)}  ratio {ratio:.3f}")

checks = [
    (not failed, f"no failed requests ({len(failed)} of {len(final)})"),
    (idle, "KV back at idle (kv_cache_usage_perc 0, num_requests_running 0)"),
    (ratio <= 1 + RSS_TOLERANCE, f"RSS end / after warm-up {ratio:.3f} <= {1 + RSS_TOLERANCE:.2f}"),
    (forks >= forks_done > 0 or not forks_done,
     f"forked: forks_total {forks:g} >= completed forking requests {forks_done}"),
    (completed > 0, f"some requests completed ({completed})"),
    (not hung, f"every client stopped within {DRAIN_S:g} s of the end ({hung} did not)"),
]
print("checks")
for ok, what in checks:
    print(f"  {'ok  ' if ok else 'FAIL'}  {what}")
if failed:
    print("failures (first 10):")
    for r in failed[:10]:
        print(f"  t={r['t']:.1f}s {r['kind']} status={r['status']} chunks={r['chunks']} "
              f"{r['error']}")
bad = sum(not ok for ok, _ in checks)
print(f"{len(checks) - bad} passed, {bad} failed")
sys.exit(1 if bad else 0)
