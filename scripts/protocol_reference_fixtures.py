#!/usr/bin/env python3
"""Writes crates/weft-protocol/tests/fixtures/ref_*.fixture: what each
protocol's reference implementation builds, for weft's fixture test.

The functions below transcribe the reference code's string building line
for line (repository, file and lines in each docstring; the full comparison
is in shared/reference/protocols-verified.md). They are written from the
references, not from weft, so the fixtures check weft against an
independent implementation of the same lines. Cases: 1, 2 and 12 children,
sparse labels (1, 2, 10), nested blocks, children that end on end of
sequence or their length limit, end of sequence as the token kept after the
close tag, and the KV-merge engines' token-budget fork guards.

Usage: protocol_reference_fixtures.py [--check]
  --check: write nothing; exit 1 if a fixture differs from what it would
  write (the test command runs this).
"""
import pathlib
import re
import sys

OUT = pathlib.Path(__file__).resolve().parent.parent / "crates/weft-protocol/tests/fixtures"

# --- ThreadWeaver: facebookresearch/threadweaver @26622324,
# threadweaver_rl/verl/experimental/agent_loop/single_turn_agent_loop.py

OUTLINE_PATTERN = re.compile(r"<Outline>\s*([0-9]+(?:\.[0-9]+)*)\s*:")  # l.42


def tw_labels(text):
    """l.368-379 and l.220: findall over the text from the last
    `<Outlines>`, de-duplicated in order (dict.fromkeys)."""
    block = text[text.rfind("<Outlines>"):]
    return list(dict.fromkeys(OUTLINE_PATTERN.findall(block)))


def tw_child_prompt(context, label):
    """l.232-234: prompt_header_text = "\\n<Thread>\\n" + f"{outline}:"."""
    return context + "\n<Thread>\n" + f"{label}:"


def tw_join(context, labels, outputs, ends, no_conclusion=True):
    """l.236-245, 267-283, 289-305: the first thread's header keeps its
    leading "\\n", later ones start at <Thread>; a thread that did not stop
    on </Thread> gets "\\n</Thread>"; then "\\n<Conclusion>\\n" or "\\n"
    with no_conclusion; if a thread ended otherwise, the block closes and
    the request ends."""
    text = context
    for i, (label, out, end) in enumerate(zip(labels, outputs, ends)):
        header = "\n<Thread>\n" + f"{label}:"
        text += (header if i == 0 else header[1:]) + out
        if end != "stop":
            text += "\n</Thread>"
    if any(e != "stop" for e in ends):
        closing = "\n</Parallel>" if no_conclusion else "\n<Conclusion>\n</Conclusion>\n</Parallel>"
        return text + closing, "finish"
    return text + ("\n" if no_conclusion else "\n<Conclusion>\n"), "continue"


# --- Multiverse: Multiverse-Engine (Swapnil-Gandhi fork @da437e27, engine
# commits by the Multiverse author), sglang/.../managers/schedule_batch.py
# (MVE/sb) and scheduler.py (MVE/sch). NPR's vendored SGLang
# (bigai-nlco/Native-Parallel-Reasoner @e148ad5d) is the same mechanism with
# other tags (NPR/sb 1586-1624, NPR/sch 1445-1472, 1574-1610).

MV_PATTERN = r"<Outline>\s*([0-9]+(?:\.[0-9]+)*)\s*:"  # MVE/sb 1560-1570
NPR_PATTERN = r"<plan>\s*([0-9]+(?:\.[0-9]+)*)\s*:"  # NPR/sb 729-735


def kv_labels(text, open_tag, pattern):
    """MVE/sb 1560-1570: re.findall over prefix[rfind(open_tag):]."""
    return re.findall(pattern, text[text.rfind(open_tag):])


def kv_child_prompt(context, tag, label):
    """MVE/sb 1584-1585 (NPR/sb 1623-1624): origin_input_ids = prefix_ids +
    tokenizer.encode(f"\\n{tag}\\n{e}") with e = f"{n}:"."""
    return context + f"\n{tag}\n{label}:"


def kv_child_output(generated, close, end, kept="\n"):
    """MVE/sb 709-715, 720-730, MVE/sch 1562-1565: a child that samples the
    close tag samples two more tokens and output_ids[:-1] keeps the tag and
    the first of them (here `kept`, "\\n" as in the trained data). The merge
    takes output_ids[:-1] of every child: one that ends on end of sequence
    loses the EOS, one cut by its length its last token; `generated` is
    what remains (weft's engine drops that token before the protocol sees
    the text), and nothing is appended."""
    return generated + close + kept if end == "stop" else generated


EOS = "<|im_end|>"  # the end-of-sequence token's text (Qwen's, as the checkpoints')


def kv_fork_allowed(position, max_new_tokens, margin):
    """MVE/sb filter_batch: a request whose FINISH_MATCHED_GOAL_TOKEN came
    at `right_most_pos - init_input_len >= max_new_tokens - 30` is
    recovered (finished_reason = None: no fork, it decodes on). NPR's
    engine refuses when fewer than 1024 tokens of budget remain (NPR/sb
    1586-1593, as the verification notes report it; its lines were not
    available here), taken as the same comparison with 1024."""
    return not (position >= max_new_tokens - margin)


def kv_join(context, tag, labels, outputs, append):
    """MVE/sch 1536-1577 (NPR/sch 1445-1472): the KV list is child 0's
    origin_input_ids + output_ids[:-1] (prefix and all of child 0, its
    leading "\\n" included), then full_input_ids[start_path_idx:] of every
    other child, start_path_idx = len(prefix) + 1 (from its tag on: MVE/sb
    1581), then tokenizer.encode(append) (MVE/sch 1435/1577)."""
    text = context
    for i, (label, out) in enumerate(zip(labels, outputs)):
        child = f"\n{tag}\n{label}:" + out
        text += child if i == 0 else child[1:]
    return text + append


# --- Parallel-R1: zhengkid/Parallel-R1 @7c3a8f33,
# verl/verl/parallel_thinking_generation_v3/parallel_thinking_loop_v3.py


def pr1_child_prompt(context):
    """l.343: prompt_ids + [PATH_OPEN]."""
    return context + "<Path>"


def pr1_child_output(generated, end):
    """l.346-355: EOS is replaced by </Path>; a path that stopped on
    </Path> keeps it; one cut by length gets </Path> appended."""
    return generated + "</Path>"


def pr1_join(context, outputs):
    """l.369-394: [<Path> ... </Path>] per path + [</Parallel>] +
    encode("\\n") + [<Summary>]."""
    return context + "".join("<Path>" + o for o in outputs) + "</Parallel>" + "\n" + "<Summary>"


# --- the cases -------------------------------------------------------------


def fixture(protocol, parent, labels, prompts, outputs, ends, joined, layout=None, then=None, ctx=None):
    """The fixture format of crates/weft-protocol/tests/fixtures.rs. A
    child's `output` is what it generated (the end-of-sequence token only
    where it is the token kept after a close tag)."""
    parts = [f"=== protocol\n{protocol}"]
    if ctx:
        parts.append(f"=== ctx\n{ctx}")
    parts.append(f"=== parent\n{parent}")
    parts.append("=== expect\nfork")
    parts.append("=== labels\n" + " ".join(labels))
    for i, p in prompts.items():
        parts.append(f"=== child {i} prompt\n{p}")
    for i, (o, e) in enumerate(zip(outputs, ends)):
        parts.append(f"=== child {i} output\n{o}")
        if e != "stop":
            parts.append(f"=== child {i} end\n{e}")
    parts.append(f"=== joined\n{joined}")
    if layout:
        parts.append(f"=== layout\n{layout}")
    if then:
        parts.append(f"=== then\n{then}")
    return "\n".join(parts) + "\n"


def refusal_fixture(protocol, parent, reason, action, ctx):
    """A fixture whose trigger does not fork: `expect refuse <reason>
    <action>`."""
    return "\n".join([f"=== protocol\n{protocol}", f"=== ctx\n{ctx}", f"=== parent\n{parent}",
                      f"=== expect\nrefuse {reason} {action}"]) + "\n"


def tw_case(name, labels_text, answers, ends):
    parent = "<think>\nQ.\n<Parallel>\n<Outlines>\n" + "".join(
        f"<Outline>{l}: step {l}</Outline>\n" for l in labels_text) + "</Outlines>"
    labels = tw_labels(parent)
    assert labels == labels_text, (labels, labels_text)
    outputs = [f" {a}</Thread>" if e == "stop" else f" {a}" for a, e in zip(answers, ends)]
    joined, then = tw_join(parent, labels, outputs, ends)
    prompts = {len(labels) - 1: tw_child_prompt(parent, labels[-1])}
    return name, fixture("threadweaver", parent, labels, prompts, outputs, ends, joined,
                         "sequential", then)


def kv_case(name, protocol, labels_text, ends, ctx=None, nested=False, kept=None):
    if protocol == "multiverse":
        open_tag, close_tag, item, item_close, pattern = "<Goal>", "</Goal>", "<Outline>", "</Outline>", MV_PATTERN
        tag, close, append, head = "<Path>", "</Path>", "<Conclusion>\n", "<Parallel>\n"
    else:
        open_tag, close_tag, item, item_close, pattern = "<guideline>", "</guideline>", "<plan>", "</plan>", NPR_PATTERN
        tag, close, append, head = "<step>", "</step>", "<takeaway>\n", ""
    lead = "<Path>\n1: outer\n" if nested and protocol == "multiverse" else ("<step>\n1: outer\n" if nested else "Q.\n")
    parent = lead + head + open_tag + "\n" + "".join(
        f"{item}\n{l}: part {l}\n{item_close}\n" for l in labels_text) + close_tag
    labels = kv_labels(parent, open_tag, pattern)
    assert labels == labels_text, (labels, labels_text)
    kept = kept or ["\n"] * len(labels)
    outputs = [kv_child_output(f" r{l}\n", close, e, k) for l, e, k in zip(labels, ends, kept)]
    joined = kv_join(parent, tag, labels, outputs, append)
    prompts = {0: kv_child_prompt(parent, tag, labels[0]),
               len(labels) - 1: kv_child_prompt(parent, tag, labels[-1])}
    return name, fixture(protocol, parent, labels, prompts, outputs, ends, joined, "merged",
                         "continue", ctx)


def kv_budget_case(name, protocol, position, max_new_tokens):
    """The fork at `position` past the prompt (ctx: depth 0, no rounds,
    own output from 0) of a request with budget `max_new_tokens`: a fork
    (checked as `kv_case` builds it) or a refusal that decodes on."""
    margin = 30 if protocol == "multiverse" else 1024
    ctx = f"0 0 0 {position} {max_new_tokens}"
    if kv_fork_allowed(position, max_new_tokens, margin):
        return kv_case(name, protocol, ["1", "2"], ["stop", "stop"], ctx=ctx)
    _, text = kv_case(name, protocol, ["1", "2"], ["stop", "stop"])
    parent = text.split("=== parent\n")[1].split("\n=== ")[0]
    return name, refusal_fixture(protocol, parent, "budget", "sequential", ctx)


def pr1_case(name, ends):
    parent = "Let me check both ways. <Parallel>"
    outputs = [f" way {i}" + ("</Path>" if e == "stop" else "") for i, e in enumerate(ends)]
    results = [pr1_child_output(o[: -len("</Path>")] if o.endswith("</Path>") else o, e)
               for o, e in zip(outputs, ends)]
    joined = pr1_join(parent, results)
    return name, fixture("parallel-r1", parent, ["1", "2"], {1: pr1_child_prompt(parent)},
                         outputs, ends, joined, "sequential", "continue")


def cases():
    twelve = [str(i) for i in range(1, 13)]
    yield tw_case("ref_threadweaver_one", ["1"], ["a"], ["stop"])
    yield tw_case("ref_threadweaver_two", ["1", "2"], ["a", "b"], ["stop", "stop"])
    yield tw_case("ref_threadweaver_twelve", twelve, [f"a{i}" for i in twelve], ["stop"] * 12)
    yield tw_case("ref_threadweaver_sparse", ["1", "2", "10"], ["a", "b", "c"], ["stop"] * 3)
    yield tw_case("ref_threadweaver_eos", ["1", "2"], ["a", "cut"], ["stop", "eos"])
    for protocol in ("multiverse", "npr"):
        short = "mv" if protocol == "multiverse" else "npr"
        yield kv_case(f"ref_{short}_one", protocol, ["1"], ["stop"])
        yield kv_case(f"ref_{short}_two", protocol, ["1", "2"], ["stop", "stop"])
        yield kv_case(f"ref_{short}_sparse", protocol, ["1", "2", "10"], ["stop"] * 3)
        yield kv_case(f"ref_{short}_ends", protocol, ["1", "2", "3"], ["stop", "eos", "length"])
        yield kv_case(f"ref_{short}_nested", protocol, ["1.1", "1.2"], ["stop", "stop"],
                      ctx="1 1", nested=True)
        # End of sequence sampled right after the close tag is the kept
        # token (check_finished returns on the pending stop first).
        yield kv_case(f"ref_{short}_kept_eos", protocol, ["1", "2"], ["stop", "stop"],
                      kept=["\n", EOS])
    yield kv_case("ref_mv_twelve", "multiverse", twelve, ["stop"] * 12)
    yield kv_budget_case("ref_mv_budget_forks", "multiverse", 69, 100)
    yield kv_budget_case("ref_mv_budget_refused", "multiverse", 70, 100)
    yield kv_budget_case("ref_mv_budget_below_margin", "multiverse", 0, 20)
    yield kv_budget_case("ref_npr_budget_forks", "npr", 975, 2000)
    yield kv_budget_case("ref_npr_budget_refused", "npr", 976, 2000)
    yield pr1_case("ref_parallel_r1_two", ["stop", "stop"])
    yield pr1_case("ref_parallel_r1_eos", ["stop", "eos"])


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, text in cases():
        path = OUT / f"{name}.fixture"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    if check and stale:
        print("stale reference fixtures (rerun scripts/protocol_reference_fixtures.py):",
              " ".join(stale), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
