"""Runs every example in README.md, and the examples `weft --help` texts give,
as a new user would type them (issue 19: "every example in the README and
in --help is run by a test"). Part of scripts/test.sh.

    python scripts/readme_examples.py WEFT_BIN VENV_PYTHON

What counts as an example, and how each kind runs:
- an inline `weft ...` command with no placeholders (upper-case words such
  as PATH, `[...]`, `...`), or a `bash scripts/...sh && weft ...` line: run
  with `weft` on PATH from the repository root, exit status 0 (for `solve`
  and `demo`, 0 or 1: 1 means the model's answer was not verified); a bare
  command named in prose (`weft eval plot`) runs with `--help`, which
  proves it exists;
- a ```sh block: the `cargo run ... demo` line runs as is; `weft serve ...`
  starts a server that the following `curl` block and the ```python block
  are run against (the README's port 8000 is replaced by a free one; the
  python block runs with the official `openai` client from the venv);
- `bash scripts/test.sh` is the command that runs this script, so it is
  skipped (and said so);
- the benchmark recipe (`bash scripts/bench-files.sh` + `weft bench decode
  --models ...`) runs where llama.cpp's `llama-quantize` is built, the
  benchmark on a short shape; elsewhere it is skipped, and said so.
- --help examples: each listed below must appear in its command's --help,
  so help and this list cannot drift apart.
A README example this script does not know how to run fails it, so a new
example cannot go untested.
"""
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

WEFT, VENV_PY = sys.argv[1], sys.argv[2]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
BIN_DIR = os.path.dirname(WEFT)
ENV = dict(os.environ, PATH=BIN_DIR + os.pathsep + os.environ["PATH"])
PLACEHOLDER = re.compile(r"\b[A-Z]{2,}(\.[a-z]+)?\b|\[|\.\.\.|\|")
ran, skipped = [], []


def sh(cmd, ok=(0,), timeout=600, **kw):
    print(f"$ {cmd}", flush=True)
    p = subprocess.run(cmd, shell=True, cwd=ROOT, env=ENV, timeout=timeout,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    if p.returncode not in ok:
        sys.exit(f"README example failed (exit {p.returncode}): {cmd}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    ran.append(cmd)
    return p


# Inline examples: `weft ...` in backticks.
for cmd in re.findall(r"`((?:bash scripts/\S+ && )?weft [^`]+)`", README):
    args = cmd.split("&&")[-1].strip()
    if PLACEHOLDER.search(args.replace("~/.cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf", "")):
        continue  # a synopsis with placeholders, not an example
    sub = args.split()[1]
    words = args.split()[1:]
    if all(re.fullmatch(r"[a-z-]+", w) for w in words) and words != ["demo"]:
        # A command named in prose (`weft eval plot`): it must exist.
        sh(f"weft {' '.join(words)} --help")
        continue
    if sub in ("serve",) or args.startswith("weft bench"):
        # Servers and benchmarks run from their own blocks/commands below.
        skipped.append((cmd, "long-running; serve runs below, benchmarks are not tests"))
        continue
    sh(cmd, ok=(0, 1) if sub in ("solve", "demo") else (0,))

# Fenced blocks.
blocks = re.findall(r"```(\w+)\n(.*?)```", README, re.S)
server = None
port = None
try:
    for lang, body in blocks:
        body = body.strip()
        if lang == "sh" and body == "bash scripts/test.sh":
            skipped.append((body, "the test command itself (it runs this script)"))
        elif lang == "sh" and body.startswith("CARGO_TARGET_DIR=") and body.endswith("-- demo"):
            sh(body, ok=(0, 1))
        elif lang == "sh" and body.startswith("bash scripts/bench-files.sh"):
            # The benchmark recipe: needs llama.cpp's llama-quantize (the
            # anchor build of ../shared/tools/llama-cpp-anchor.sh), which CI
            # does not make. Where it is built, both lines run, the
            # benchmark on a short shape (the README's is minutes long).
            anchor = os.path.expanduser("~/.cache/llama-cpp-anchor/build/bin/llama-quantize")
            if not os.path.exists(anchor):
                skipped.append((body, "needs llama-quantize from ../shared/tools/llama-cpp-anchor.sh"))
            else:
                lines = [l for l in body.splitlines() if l.strip()]
                assert lines[0] == "bash scripts/bench-files.sh", lines
                sh(lines[0], timeout=1800)
                for l in lines[1:]:
                    short = re.sub(r" -r \d+", "", l) + " --prompt-tokens 32 --gen-tokens 8 -r 1"
                    p = sh(short, timeout=900, executable="/bin/bash")
                    assert "| SmolLM2-135M-Instruct.Q4_K_M.gguf |" in p.stdout, p.stdout
        elif lang == "sh" and body.startswith("weft serve "):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cmd = body + f" --port {port}"
            print(f"$ {cmd} &", flush=True)
            # `exec`: the shell becomes the server, so terminating it stops
            # the server (a plain `shell=True` child outlived every run).
            server = subprocess.Popen("exec " + cmd, shell=True, cwd=ROOT, env=ENV,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(600):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    if server.poll() is not None:
                        sys.exit(f"weft serve exited: {server.stderr.read()}")
                    time.sleep(0.1)
            ran.append(cmd)
        elif lang == "sh" and body.startswith("curl "):
            assert server is not None, "a curl example before the weft serve example"
            for cmd in re.split(r"\n(?=curl )", body):
                cmd = "\n".join(l for l in cmd.splitlines() if not l.lstrip().startswith("#"))
                cmd = cmd.replace("localhost:8000", f"localhost:{port}")
                p = sh(cmd.strip() + " --fail-with-body --silent --show-error")
                assert '"choices"' in p.stdout, p.stdout
        elif lang == "python":
            assert server is not None, "a python example before the weft serve example"
            code = body.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            print("$ python <README's python example>", flush=True)
            p = subprocess.run([VENV_PY, "-c", code], cwd=ROOT, timeout=300,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if p.returncode != 0:
                sys.exit(f"README python example failed:\n{p.stdout}\n{p.stderr}")
            ran.append("python example")
        else:
            sys.exit(f"README has a ```{lang} block this script does not know how to run:\n{body[:300]}")
finally:
    if server is not None:
        server.terminate()
        server.wait(timeout=30)

# --help examples: (the help to show, the example it must contain, the
# command that runs it, allowed exit codes).
HELP_EXAMPLES = [
    (["solve", "--help"], '"9 3 4 -> 24"', 'weft solve "9 3 4 -> 24"', (0, 1)),
    (["countdown", "solve", "--help"], '"17 62 25 7 -> 63"', 'weft countdown solve "17 62 25 7 -> 63"', (0,)),
    (["--help"], '"9 3 4 -> 24"', 'weft solve "9 3 4 -> 24" --quiet', (0, 1)),
]
for help_args, example, cmd, ok in HELP_EXAMPLES:
    h = subprocess.run([WEFT, *help_args], capture_output=True, text=True).stdout
    if example not in h:
        sys.exit(f"`weft {' '.join(help_args)}` no longer shows {example}: update scripts/readme_examples.py")
    sh(cmd, ok=ok)

print(f"README and --help examples: {len(ran)} ran", flush=True)
for cmd, why in skipped:
    print(f"  not run: {cmd}  ({why})")
