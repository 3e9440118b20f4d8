#!/usr/bin/env python3
"""Regenerates weft-model's golden outputs from llama.cpp (llama-server).

    python3 scripts/llama_cpp_golden.py [--model M] [--server BIN] [--out FILE]

Starts llama-server (built by ../shared/tools/llama-cpp-anchor.sh) on the test
model, then records, for the strings and prompts below:
  - token ids from /tokenize (special tokens parsed, no BOS added);
  - the chat template as llama.cpp renders it (/apply-template);
  - the first-step top-20 tokens and their probabilities (pre-sampling softmax);
  - 64 greedy tokens, with the top-2 log-probabilities at every position
    (so the test can tell a near-tie from a real divergence).
Uses only the Python standard library. CI reads the committed JSON and needs
no llama.cpp.
"""
import argparse, json, os, subprocess, sys, time, urllib.request

HOME = os.path.expanduser("~")
DEFAULT_MODEL = os.path.join(HOME, ".cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf")
DEFAULT_SERVER = os.path.join(HOME, ".cache/llama-cpp-anchor/build/bin/llama-server")
DEFAULT_OUT = os.path.join(os.path.dirname(__file__), "..", "crates/weft-model/tests/golden/smollm2_q4_1.json")

TOKENIZE = [
    "Hello, world!",
    "  leading spaces and   runs   of spaces",
    "tabs\tand\nnewlines\n\n\nand\r\nCRLF",
    "numbers 1234567890 3.14159 -42 1e10 0x1F",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}",
    "def f(x):\n\treturn x**2  # square",
    "Unicode: café naïve résumé Ωμέγα Привет мир",
    "CJK: 你好，世界！日本語のテキスト 한국어",
    "Emoji: 🎉🚀👍🏽 and 👨‍👩‍👧‍👦 family",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after a special token",
    "mixed<|im_end|>special<|im_start|>inline",
    "don't won't I'm you're they've we'll she'd",
    "ALLCAPS and CamelCaseWords and snake_case_words",
    "URL: https://example.com/path?q=1&r=two#frag",
    "math: (25-17)*7+63/9 = 63.0; x^2 + y^2 = z^2",
    "Moving to Node #0,1,1\nCurrent State: 63:[17, 62, 25, 7], Operations: ['25-17=8']",
    "",
    " ",
    "\n",
    "a" * 100,
    "trailing whitespace   \n\t ",
    "Ünïcödé ŝtrîñg with ĉombining ḿarks é",
]

PLAIN_PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):\n",
    "The three primary colors are",
    "Q: What is 12 times 12?\nA:",
]

CHAT_PROMPTS = [
    "What is 2+2?",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
]


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def top(entry, key="top_logprobs"):
    return [[t["id"], t["logprob"]] for t in entry[key]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--server", default=DEFAULT_SERVER)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--port", type=int, default=18089)
    ap.add_argument("--server-arg", action="append", default=[], help="extra llama-server flag (repeatable)")
    a = ap.parse_args()
    proc = subprocess.Popen([a.server, "-m", a.model, "-t", "2", "-c", "4096", "-np", "1",
                             "--port", str(a.port), "--host", "127.0.0.1"] + a.server_arg,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{a.port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.5)
        else:
            sys.exit("llama-server did not start")
        out = {"model": os.path.basename(a.model), "tokenize": [], "prompts": []}
        for s in TOKENIZE:
            ids = post(a.port, "/tokenize", {"content": s, "add_special": False, "parse_special": True})["tokens"]
            out["tokenize"].append({"text": s, "ids": ids})
        prompts = [{"kind": "plain", "input": p, "text": p} for p in PLAIN_PROMPTS]
        for p in CHAT_PROMPTS:
            rendered = post(a.port, "/apply-template", {"messages": [{"role": "user", "content": p}]})["prompt"]
            prompts.append({"kind": "chat", "input": p, "text": rendered})
        for p in prompts:
            ids = post(a.port, "/tokenize", {"content": p["text"], "add_special": True, "parse_special": True})["tokens"]
            first = post(a.port, "/completion", {"prompt": ids, "n_predict": 1, "temperature": 0,
                                                 "n_probs": 20, "cache_prompt": False})
            greedy = post(a.port, "/completion", {"prompt": ids, "n_predict": 64, "temperature": 0,
                                                  "n_probs": 2, "cache_prompt": False})
            steps = greedy["completion_probabilities"]
            p.update({
                "prompt_ids": ids,
                "first_top20": top(first["completion_probabilities"][0]),
                "greedy_ids": [s["id"] for s in steps],
                "greedy_top2": [top(s) for s in steps],
                "greedy_text": greedy["content"],
                "stop_type": greedy.get("stop_type"),
            })
            print(f"{p['kind']:5} {len(ids):3} prompt tokens -> {len(steps)} tokens: {greedy['content'][:60]!r}", file=sys.stderr)
        out["prompts"] = prompts
        with open(a.out, "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"wrote {a.out}", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
