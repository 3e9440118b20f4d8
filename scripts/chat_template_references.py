#!/usr/bin/env python3
"""Writes crates/weft-model/tests/golden/chat_templates.json: every chat
template in llama.cpp's models/templates (fetched by
scripts/fetch-peer-suites.sh into ~/.cache/weft/peer/llama.cpp) rendered by
Python jinja2 exactly as transformers renders it, for weft's chat template
test (crates/weft-model/tests/chat_templates.rs).

The environment is transformers' `_cached_compile_jinja_template` and its
`render_jinja_template` (transformers/utils/chat_template_utils.py,
transformers 5.24.0; `--against-transformers` checks the two agree):
  - ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
    extensions=[AssistantTracker, jinja2.ext.loopcontrols]), where
    AssistantTracker parses `{% generation %}...{% endgeneration %}` and
    renders its body unchanged (it only records offsets when asked for an
    assistant mask, which apply_chat_template does not do by default);
  - filter tojson(x, ensure_ascii=False, indent=None, separators=None,
    sort_keys=False) = json.dumps(x, ...same arguments);
  - global raise_exception(message): raises jinja2's TemplateError(message);
  - global strftime_now(format): datetime.now().strftime(format) in
    transformers; here on a FIXED date, 2024-07-26 00:00:00 (a Friday), so
    the renderings are reproducible (weft's chat.rs uses the same date);
  - globals dict (a callable that builds a dict) and namespace (jinja2's
    Namespace, refusing attribute names that start with "_");
  - render(messages=..., tools=None, documents=None,
    add_generation_prompt=..., **special_tokens): transformers passes tools
    and documents as None when they are not given, and the tokenizer's
    special tokens map; here bos_token="<s>" and eos_token="</s>" only
    (weft passes those two).

Each template is rendered for four conversations (one user turn; system +
user; system + user + assistant + user; user + assistant, ending on the
assistant), each with add_generation_prompt true and false. A case holds
the rendered string, or {"error": message, "type": exception class} when
jinja2 raises.

Usage: chat_template_references.py [--check | --against-transformers]
  --check: write nothing; exit 1 if the golden file differs from what it
  would write (the test command runs this).
  --against-transformers: write nothing; render every case with
  transformers' own render_jinja_template as well (strftime_now's clock
  patched to the fixed date) and exit 1 on any difference. Needs
  transformers (the torch venv in ~/.cache/weft has it).
Needs jinja2 (scripts/test.sh runs it from the venv in ~/.cache/weft with
jinja2 pinned). Templates: $WEFT_PEER_DIR/models/templates, by default
~/.cache/weft/peer/llama.cpp/models/templates.
"""
import datetime
import hashlib
import json
import os
import pathlib
import sys

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/weft-model/tests/golden/chat_templates.json"
CACHE = pathlib.Path(os.environ.get("WEFT_CACHE", pathlib.Path.home() / ".cache/weft"))
PEER = pathlib.Path(os.environ.get("WEFT_PEER_DIR", CACHE / "peer/llama.cpp"))
TEMPLATES = PEER / "models/templates"

# strftime_now's date: fixed so the references do not change by the day.
FIXED_NOW = datetime.datetime(2024, 7, 26, 0, 0, 0)
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"

# Ordinary text with the things templates trip on: leading and trailing
# whitespace, inner newlines, non-ASCII, both kinds of quote, braces.
SYSTEM = "You are a helpful assistant.\nAnswer in \"plain\" words; don't use markdown."
USER_1 = "  Hello! Can you tell me what 2 + 2 is?\n\nThanks — merci, 谢谢 🙂  "
ASSISTANT_1 = "2 + 2 = 4.\n\nAnything else? {curly} 'single' \"double\"\n"
USER_2 = "Yes: write `print(\"héllo\")` in Python,\tplease.\n"

CONVERSATIONS = {
    "user": [
        {"role": "user", "content": USER_1},
    ],
    "system_user": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER_1},
    ],
    "multi_turn": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER_1},
        {"role": "assistant", "content": ASSISTANT_1},
        {"role": "user", "content": USER_2},
    ],
    "ends_on_assistant": [
        {"role": "user", "content": USER_1},
        {"role": "assistant", "content": ASSISTANT_1},
    ],
}


class AssistantTracker(jinja2.ext.Extension):
    """transformers' AssistantTracker without the offset tracking (inactive
    unless an assistant mask is requested): `{% generation %}` renders its
    body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(
            self.call_method("_generation_support"), [], [], body
        ).set_lineno(lineno)

    def _generation_support(self, caller):
        return caller()


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def strftime_now(format):
    return FIXED_NOW.strftime(format)


class TemplateDict:
    """transformers' `dict` global: builds plain dicts, exposes nothing else."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class TemplateNamespace(jinja2.utils.Namespace):
    """transformers' `namespace` global: no underscore-prefixed attributes."""

    def __init__(*args, **kwargs):
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}. "
                "Please rename the attribute."
            )


def compile_template(source):
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)


def error(e):
    return {"error": str(e), "type": type(e).__name__}


def render_cases(source, render=None):
    """Every case of one template: {case key: rendered string or error}.
    `render(source, messages, add_generation_prompt)` defaults to this
    script's environment."""
    if render is None:
        template, parse_error = None, None
        try:
            template = compile_template(source)
        except Exception as e:  # a template jinja2 cannot parse: every case errs
            parse_error = e

        def render(source, messages, add_generation_prompt):
            if parse_error is not None:
                raise parse_error
            return template.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                bos_token=BOS_TOKEN,
                eos_token=EOS_TOKEN,
            )

    cases = {}
    for name, messages in CONVERSATIONS.items():
        for add_generation_prompt in (True, False):
            key = f"{name}/add_generation_prompt={str(add_generation_prompt).lower()}"
            try:
                cases[key] = render(source, messages, add_generation_prompt)
            except Exception as e:
                cases[key] = error(e)
    return cases


def transformers_render():
    """transformers' own render_jinja_template, as apply_chat_template calls
    it with no tools or documents, its clock fixed to FIXED_NOW."""
    import copy

    from transformers.utils import chat_template_utils as ctu

    class FixedDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return FIXED_NOW

    ctu.datetime = FixedDatetime

    def render(source, messages, add_generation_prompt):
        rendered, _ = ctu.render_jinja_template(
            conversations=[copy.deepcopy(messages)],
            chat_template=source,
            add_generation_prompt=add_generation_prompt,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
        )
        return rendered[0]

    return render


def build(templates_dir):
    paths = sorted(templates_dir.glob("*.jinja"))
    if not paths:
        sys.exit(f"no templates in {templates_dir}: run scripts/fetch-peer-suites.sh")
    golden = {
        "about": (
            "Written by scripts/chat_template_references.py: llama.cpp's models/templates "
            "rendered by jinja2 as transformers renders them; strftime_now on "
            f"{FIXED_NOW.isoformat()}; bos_token={BOS_TOKEN!r}, eos_token={EOS_TOKEN!r}."
        ),
        "jinja2": jinja2.__version__,
        "conversations": CONVERSATIONS,
        "templates": {},
    }
    for path in paths:
        raw = path.read_bytes()
        golden["templates"][path.name] = {
            "sha256": hashlib.sha256(raw).hexdigest(),
            "cases": render_cases(raw.decode("utf-8")),
        }
    return json.dumps(golden, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def against_transformers(templates_dir):
    import transformers

    paths = sorted(templates_dir.glob("*.jinja"))
    render = transformers_render()
    differ = total = 0
    for path in paths:
        source = path.read_bytes().decode("utf-8")
        ours, theirs = render_cases(source), render_cases(source, render)
        for key in ours:
            total += 1
            if ours[key] != theirs[key]:
                differ += 1
                print(f"{path.name} {key}:\n  this script:  {ours[key]!r}\n  transformers: {theirs[key]!r}")
    print(f"transformers {transformers.__version__}, jinja2 {jinja2.__version__}: "
          f"{total - differ} of {total} renderings the same")
    return 1 if differ else 0


def main(argv):
    check = "--check" in argv
    templates_dir = TEMPLATES
    if "--against-transformers" in argv:
        return against_transformers(templates_dir)
    text = build(templates_dir)
    if check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.relative_to(ROOT)} is stale: run scripts/chat_template_references.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    total = sum(len(t["cases"]) for t in json.loads(text)["templates"].values())
    print(f"wrote {OUT.relative_to(ROOT)}: {len(json.loads(text)['templates'])} templates, {total} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
