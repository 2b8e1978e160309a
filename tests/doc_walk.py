"""Walk every code block of the README and docs/ as a new user would, and check what the text beside it claims.

In file order (README first: the docs build on its runs), in one working folder whose ``../shared`` is the shared
models and data: Python blocks run in one namespace per file, shell blocks as one bash script per block (its
variables and `source .venv/bin/activate` as written; the folder's ``.venv`` is this interpreter's). What is
checked:

- every command exits 0 and every Python statement runs;
- a Python expression whose comment starts with a value (``x.shape   # torch.Size([2, 576])``,
  ``p   # ~0.77``, ``print(names)   # ['embed', ...]``, ``records   # [{'kind': 'steer', ...}, ...]``) equals
  it: ``~`` means within 5 %, ``...`` in a list means "and more", in a dict "and other keys";
- a shell comment's time (``# ~32 s``, ``# 1 min 48 s``) is not exceeded by more than 5x + 60 s (the docs say
  they were timed on 2 CPU cores; a slower machine is not a failure, a stale claim is);
- the claims no value syntax can carry (``# [layer, position]: 0 = corrupted run, 1 = clean run``, ``# ~10 s,
  19 MB``, the files a run writes) are checked by the named functions in :data:`CLAIMS`, found by the text of
  the line they belong to (a claim whose line left the docs fails, so the table cannot go stale).

A block that cannot run here says why in an HTML comment right above it (``<!-- walk: skip needs a GPU and the
hub -->``); ``<!-- walk: setup`` ... ``-->`` holds code the walk runs first (names the text defines in prose).
Substitutions, each printed: the explainer URL becomes a local server speaking the OpenAI protocol; ``actlab
serve`` runs until its page answers, then stops. Run ``python tests/doc_walk.py --help``; ``make test-docs``
runs it through ``tests/test_doc_walk.py``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGS = {"python", "bash", "sh", "shell", "console"}
CHECK_LANGS = {"yaml"}  # parsed, and validated when a directive names the config class
TIME_FACTOR, TIME_SLACK_S = 5.0, 60.0


@dataclass
class Block:
    path: Path
    line: int  # line of the opening fence
    lang: str
    code: str
    skip: str | None = None  # reason
    setup: str = ""  # hidden code run first
    config: str | None = None  # yaml: dotted path of the pydantic class it must validate against

    @property
    def where(self) -> str:
        return f"{self.path.name}:{self.line}"


@dataclass
class Result:
    where: str
    what: str  # command or statement
    status: str  # ok | fail | skip
    seconds: float = 0.0
    claims: list[str] = field(default_factory=list)  # claims checked, as text
    error: str = ""


# ---------------------------------------------------------------------------------------------- parsing


_DIRECTIVE = re.compile(r"<!--\s*walk:\s*(skip|setup|config)\b(.*?)(-->|$)", re.S)


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a markdown file, each with the directive in the HTML comment right above it."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            lang = line.strip("` ").lower()
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            block = Block(path, i + 1, lang, "\n".join(lines[i + 1:j]) + "\n")
            _attach_directive(block, lines, i)
            out.append(block)
            i = j + 1
            continue
        i += 1
    return out


def _attach_directive(block: Block, lines: list[str], fence: int) -> None:
    """Read the `<!-- walk: ... -->` comment ending on the line above the fence (it may span lines)."""
    end = fence - 1
    if end < 0 or not lines[end].rstrip().endswith("-->"):
        return
    start = end
    while start >= 0 and "<!--" not in lines[start]:
        start -= 1
    if start < 0:
        return
    text = "\n".join(lines[start:end + 1])
    m = _DIRECTIVE.search(text)
    if not m:
        return
    kind, body = m.group(1), m.group(2).strip()
    if kind == "skip":
        block.skip = body or "(no reason given)"
    elif kind == "setup":
        block.setup = body + "\n"
    else:
        block.config = body


def shell_commands(code: str) -> list[tuple[int, str, str]]:
    """(line offset, command, trailing comment) per logical line; continuations joined, comment lines dropped."""
    out: list[tuple[int, str, str]] = []
    buf, comment, start = "", "", 0
    for k, raw in enumerate(code.splitlines()):
        cmd, note = _split_comment(raw)
        if not buf and not cmd.strip():
            continue
        if not buf:
            start = k
        comment = (comment + " " + note).strip() if note else comment
        if cmd.rstrip().endswith("\\"):
            buf += cmd.rstrip()[:-1].strip() + " "
            continue
        buf += cmd.strip()
        out.append((start, re.sub(r"^\$ ", "", buf), comment))
        buf, comment = "", ""
    return out


def _split_comment(line: str) -> tuple[str, str]:
    """Split a shell line at its first unquoted ` #` (a `#` inside quotes stays)."""
    quote = None
    for k, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k], line[k + 1:].strip()
    return line, ""


_TIME = re.compile(r"(?:^|[\s~(:;])~?(?:(\d+)\s*min\s*)?(?:(\d+(?:\.\d+)?)\s*s)\b")


def claimed_seconds(comment: str) -> float | None:
    """`~32 s` -> 32, `1 min 48 s` -> 108, `~10 s, 19 MB` -> 10; None when the comment states no time."""
    m = _TIME.search(comment)
    if not m:
        return None
    return float(m.group(1) or 0) * 60 + float(m.group(2))


# ---------------------------------------------------------------------------------------------- value claims


class _Partial(dict):
    """A dict claim written with `...`: the actual dict may hold other keys."""


def claimed_value(comment: str, names: dict[str, Any]) -> tuple[bool, Any, str] | None:
    """The value a comment starts with: (approximate, value, its text); None when it starts with prose.

    The value must end the comment or be followed by `,` or `;` (so `0 = corrupted run` is prose)."""
    text = comment.strip()
    approx = text.startswith("~")
    text = text.lstrip("~").strip()
    cuts = sorted({len(text), *(m.start() for m in re.finditer(r"[,;]", text))}, reverse=True)
    for cut in cuts:
        candidate = text[:cut].strip()
        if not candidate or not re.match(r"^[\[{(\d\-'\"]|^torch\.", candidate):
            continue
        src = re.sub(r",\s*\.\.\.\s*}", ", '...': ...}", candidate)
        try:
            value = eval(src, {"__builtins__": {}, **names})
        except Exception:
            continue
        return approx, _mark_partial(value), candidate
    return None


def _mark_partial(v: Any) -> Any:
    if isinstance(v, dict):
        partial = "..." in v
        d = {k: _mark_partial(x) for k, x in v.items() if k != "..."}
        return _Partial(d) if partial else d
    if isinstance(v, list):
        return [_mark_partial(x) for x in v]
    return v


def matches(claim: Any, actual: Any, approx: bool) -> bool:
    """Does ``actual`` equal the ``claim`` (``~``: within 5 %; trailing ``...``: a prefix; partial dicts)?"""
    try:
        import torch
        if isinstance(actual, torch.Tensor) and actual.ndim == 0:
            actual = actual.item()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(claim, list) and isinstance(actual, (list, tuple)):
        if claim and claim[-1] is Ellipsis:
            head = claim[:-1]
            return len(actual) >= len(head) and all(matches(c, a, approx) for c, a in zip(head, actual, strict=False))
        return len(claim) == len(actual) and all(matches(c, a, approx) for c, a in zip(claim, actual, strict=True))
    if isinstance(claim, dict) and isinstance(actual, dict):
        if not isinstance(claim, _Partial) and set(claim) != set(actual):
            return False
        return all(k in actual and matches(v, actual[k], approx) for k, v in claim.items())
    if isinstance(claim, (int, float)) and not isinstance(claim, bool) and isinstance(actual, (int, float)):
        if approx:
            return math.isclose(actual, claim, rel_tol=0.05, abs_tol=0.0)
        return math.isclose(actual, claim, rel_tol=1e-6, abs_tol=1e-9)
    return claim == actual


# ---------------------------------------------------------------------------------------------- claims by hand

# Claims a value cannot carry: (file name, text of the line) -> check(namespace_or_workdir, value_or_output).
# Python checks get (namespace, value of the expression); shell checks get (working folder, command output).


def _resid_shape_on_cpu(ns: dict, value: Any) -> str:
    t = ns["acts"]["blocks.10.resid_post"]
    assert t.device.type == "cpu" and str(t.dtype) == "torch.float32", (t.device, t.dtype)
    return "on CPU, float32"


def _model_repr(ns: dict, value: Any) -> str:
    text = repr(ns["model"])
    for word in ("family", "layers", "d_model"):
        assert word in text, f"{word!r} not in {text!r}"
    assert len(text.splitlines()) == 1, text
    return "one line naming family, layers, d_model"


def _one_string_per_prompt(ns: dict, value: Any) -> str:
    out = ns["model"].generate_text(["Hi", "Hello there"], max_new_tokens=2)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(s, str) for s in out), out
    return "generate_text returns one string per prompt"


def _grads_like_acts(ns: dict, value: Any) -> str:
    acts = ns["acts"]
    g, a = value, acts["blocks.3.attn.z"]
    assert g.shape == a.shape and g.ndim == 4, (g.shape, a.shape)
    assert g.shape[2] == ns["model"].n_heads, (g.shape, ns["model"].n_heads)
    return f"grads {tuple(g.shape)} = [batch, seq, head, d_head], like acts"


def _normalised_grid(ns: dict, value: Any) -> str:
    model = ns["model"]
    assert value.shape[0] == model.n_layers, (value.shape, model.n_layers)
    # patching layer 0's resid_pre at the one differing token restores the clean run: 1
    hi = float(value[0].max())
    assert abs(hi - 1.0) < 1e-3, f"layer 0 max {hi}, expected 1 (clean run)"
    lo = float(value[0].abs().min())
    assert lo < 1e-3, f"layer 0 min {lo}, expected 0 (tokens that do not differ)"
    return "[layer, position]; layer 0: 1 at the differing token, 0 elsewhere"


def _records(ns: dict, value: Any) -> str:
    kinds = [r["kind"] for r in value]
    assert kinds[:2] == ["steer", "project_out"], kinds
    return f"record kinds {kinds}"


def _same_shape(ns: dict, value: Any) -> str:
    a, g = value
    assert a.shape == g.shape, (a.shape, g.shape)
    return f"activation and gradient both {tuple(a.shape)}"


def _edit_records(ns: dict, value: Any) -> str:
    steer = next(r for r in value if r["kind"] == "steer")
    for key in ("points", "layers", "multiplier"):
        assert key in steer, f"the steer record lacks {key!r}: {steer}"
    src = steer["vector"]["source"]
    assert src["file"].endswith(".safetensors") and len(src["sha256"]) == 64, src
    assert all("kind" in r and "points" in r for r in value), value
    return f"{len(value)} records; the vector's file and sha256 recorded"


def _sweep_unmoved(work: Path, out: str) -> str:
    assert "no steered cell differs from the unsteered one" in out, "the sweep does not say that nothing moved"
    cells = json.loads((work / "runs/sweep/sweep.json").read_text())["cells"]
    ps = [c["p_matching"] for c in cells.values()]
    assert all(abs(p - 0.49) < 0.03 for p in ps), ps
    return f"p {min(ps):.3f}..{max(ps):.3f} in every cell, and the command says nothing moved"


def _table_columns(out: str) -> list[str]:
    """The text of each column of the rich table a command printed (cells wrap over lines)."""
    cols: list[list[str]] = []
    for row in out.splitlines():
        if row.count("│") >= 2:
            cells = [c.strip() for c in row.strip().strip("│").split("│")]
            cols += [[] for _ in range(len(cells) - len(cols))]
            for c, text in zip(cols, cells, strict=False):
                c.append(text)
    return [" ".join(c).strip() for c in cols]


def _turns_grim(work: Path, out: str) -> str:
    from actlab.steering.scorers import VaderScorer

    _, unsteered, steered = _table_columns(out)[:3]
    a, b = VaderScorer()([], [unsteered, steered])
    assert b < a - 0.3, f"VADER {a:+.2f} unsteered -> {b:+.2f} steered: not grimmer ({steered!r})"
    return f"VADER {a:+.2f} unsteered -> {b:+.2f} steered"


def _serve_says_where(work: Path, out: str) -> str:
    said = "actlab playground for HuggingFaceTB/SmolLM2-135M-Instruct on http://127.0.0.1:8765/ (Ctrl+C to stop)"
    assert said in out, f"the server did not say {said!r}"
    return "printed where it serves"


def _eval_files(work: Path, out: str) -> str:
    for f in ("index.html", "leaderboard.csv", "results.jsonl"):
        assert (work / "runs/eval" / f).is_file(), f
    return "runs/eval/index.html, leaderboard.csv, results.jsonl exist"


def _cache_size(work: Path, out: str) -> str:
    mb = sum(f.stat().st_size for f in (work / "runs/cache").rglob("*") if f.is_file()) / 1e6
    assert 19 * 0.8 <= mb <= 19 * 1.25, f"{mb:.1f} MB, claimed 19 MB"
    return f"cache {mb:.1f} MB (claimed 19 MB)"


def _latents_json(work: Path, out: str) -> str:
    data = json.loads((work / "runs/diff/latents.json").read_text())
    rows = data if isinstance(data, list) else data.get("latents", [])
    assert rows and all("class" in r for r in rows), "latents.json has no per-latent class"
    assert any(work.glob("runs/diff/*.png")), "no figures"
    return f"latents.json: {len(rows)} latents with a class; figures"


def _preference_accuracy(work: Path, out: str) -> str:
    m = re.search(r"preference accuracy[^0-9]*([0-9.]+)", out)
    assert m, "the run does not print a preference accuracy"
    acc = float(m.group(1))
    assert abs(acc - 0.875) <= 0.1, f"preference accuracy {acc}, claimed 0.875"
    return f"preference accuracy {acc}"


def _ablated_size(ns: dict, value: Any) -> str:
    mb = sum(f.stat().st_size for f in Path("runs/model-ablated").rglob("*") if f.is_file()) / 1e6
    assert 450 <= mb <= 800, f"{mb:.0f} MB, claimed ~600 MB"
    return f"saved copy {mb:.0f} MB (claimed ~600 MB)"


CLAIMS: dict[tuple[str, str], Callable[[Any, Any], str]] = {
    ("README.md", 'acts["blocks.10.resid_post"].shape'): _resid_shape_on_cpu,
    ("README.md", "print(model)"): _model_repr,
    ("README.md", "add_special_tokens=False)[0])"): _one_string_per_prompt,
    ("README.md", 'acts.grads["blocks.3.attn.z"]'): _grads_like_acts,
    ("README.md", 'res.normalised("resid_pre")'): _normalised_grid,
    ("README.md", "edits.records()"): _records,
    ("README.md", 'orthogonalize(model, vec[12]).save("runs/model-ablated")'): _ablated_size,
    ("README.md", "actlab eval run runs/eval.yaml"): _eval_files,
    ("eval.md", "actlab eval run eval.yaml"): _eval_files,
    ("README.md", "--multipliers -4,0,4 --out runs/sweep"): _sweep_unmoved,
    ("README.md", "-p \"Tell me about your neighbour.\" --max-new-tokens 32"): _turns_grim,
    ("README.md", "--points blocks.1.mlp_out --out runs/cache"): _cache_size,
    ("README.md", "--steps 500 --out runs/diff"): _latents_json,
    ("diffing.md", "--batch-size 8 --lr 1e-4 --max-length 128 --out runs/dpo_656k"): _preference_accuracy,
    ("reading.md", "act.normalised(\"resid_pre\")"): _normalised_grid,
    ("reading.md", 'acts["blocks.3.attn.z"], acts.grads["blocks.3.attn.z"]'): _same_shape,
    ("architecture.md", "ed.records()"): _edit_records,
    ("playground.md", "actlab serve HuggingFaceTB/SmolLM2-135M-Instruct --vector runs/refusal_caa.safetensors"):
        _serve_says_where,
}


def claims_for(path: Path, text: str) -> list[Callable[[Any, Any], str]]:
    return [fn for (name, anchor), fn in CLAIMS.items() if name == path.name and anchor in text]


def walked_texts(path: Path) -> list[str]:
    """What the walk matches claims against: each shell command (joined, comment dropped) and each Python
    statement of the file's runnable blocks."""
    out: list[str] = []
    for block in blocks(path):
        if block.skip or block.lang not in RUN_LANGS:
            continue
        if block.lang == "python":
            code = block.setup + block.code
            out += [ast.get_source_segment(code, s) or "" for s in ast.parse(code).body]
        else:
            out += [cmd for _, cmd, _ in shell_commands(block.setup + block.code)]
    return out


def stale_claims() -> list[tuple[str, str]]:
    """Table entries that match no walked command or statement (the line left the docs or changed)."""
    texts = {p.name: walked_texts(p) for p in DOCS}
    return [(n, a) for n, a in CLAIMS if not any(a in t for t in texts.get(n, []))]


# ---------------------------------------------------------------------------------------------- running


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_python(block: Block, ns: dict, work: Path, log: Callable[[str], None]) -> list[Result]:
    """Run a Python block statement by statement in ``ns``; check each expression's value claim."""
    import torch

    results: list[Result] = []
    code = block.setup + block.code
    tree = ast.parse(code)
    comments = _line_comments(code)
    setup_lines = block.setup.count("\n")
    with _cwd(work):
        for stmt in tree.body:
            src = ast.get_source_segment(code, stmt) or ""
            lineno = block.line + stmt.end_lineno - setup_lines  # the fence is line 0 of the block
            where = f"{block.path.name}:{lineno}"
            first = src.splitlines()[0] if src else ""
            comment = comments.get(stmt.end_lineno, "")
            t0 = time.perf_counter()
            res = Result(where, first[:100], "ok")
            try:
                value = _exec_stmt(stmt, src, ns)
                hand = claims_for(block.path, src) if stmt.lineno > setup_lines else []
                if comment and stmt.lineno > setup_lines and isinstance(stmt, ast.Expr):
                    parsed = claimed_value(comment, {"torch": torch})
                    if parsed is not None:
                        approx, claim, text = parsed
                        if not matches(claim, value, approx):
                            raise AssertionError(f"the docs say {comment!r}; the code gives {_short(value)}")
                        res.claims.append(f"= {'~' if approx else ''}{text} ({_short(value)[:60]})")
                for fn in hand:
                    res.claims.append(fn(ns, value))
            except Exception as e:
                res.status, res.error = "fail", f"{type(e).__name__}: {e}"
            res.seconds = time.perf_counter() - t0
            log(_line(res))
            results.append(res)
            if res.status == "fail":
                break
    return results


def _exec_stmt(stmt: ast.stmt, src: str, ns: dict) -> Any:
    """Execute one statement; an expression's value is returned (for `print(x)`, x's value, also printed)."""
    if isinstance(stmt, ast.Expr):
        node = stmt.value
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print" \
                and len(node.args) == 1 and not node.keywords:
            value = eval(compile(ast.Expression(node.args[0]), "<doc>", "eval"), ns)
            print(value)
            return value
        return eval(compile(ast.Expression(node), "<doc>", "eval"), ns)
    exec(compile(ast.Module([stmt], []), "<doc>", "exec"), ns)
    return None


def _line_comments(code: str) -> dict[int, str]:
    import tokenize

    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) < 300 else text[:300] + "..."


def run_shell(block: Block, work: Path, env: dict[str, str], prelude: str, llm_url: str | None,
              log: Callable[[str], None]) -> tuple[list[Result], str]:
    """Run a shell block as one bash script (``prelude`` first: the variables earlier blocks of the file set);
    stop at the first command that fails. Returns the results and the prelude for the next block."""
    cmds = shell_commands(block.setup + block.code)
    results: list[Result] = []
    marks = work / ".walk-marks"
    script = ["set -eo pipefail", prelude]
    for k, (off, cmd, _) in enumerate(cmds):
        run_cmd = _substitute(cmd, llm_url)
        if run_cmd.startswith("pip install"):
            results.append(Result(f"{block.path.name}:{block.line + 1 + off}", cmd, "skip",
                                  error="installs packages: the walk runs in the installed environment"))
            continue
        out_file = work / f".walk-out-{k}"
        if run_cmd.startswith("actlab serve "):
            run_cmd = f"{shlex.quote(sys.executable)} {shlex.quote(__file__)} serve -- {run_cmd[len('actlab '):]}"
        if _STATE.fullmatch(run_cmd):
            line = run_cmd  # assignments, exports, `source`, `cd`: they must stay in this shell
        else:
            line = f"{{ {run_cmd}; }} 2>&1 | tee {out_file}"  # the command's own `> file` still applies
        script.append(f"__t0=$(date +%s.%N); {line}; echo {k} $__t0 $(date +%s.%N) >> {marks}")
    marks.unlink(missing_ok=True)
    proc = subprocess.Popen(["bash", "-c", "\n".join(script)], cwd=work, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail: list[str] = []
    for row in proc.stdout or []:  # streamed: a long walk shows its progress
        log("    | " + row.rstrip())
        tail = [*tail[-40:], row]
    proc.wait()
    output_tail = "".join(tail)[-3000:]
    done = {}
    if marks.exists():
        for row in marks.read_text().split("\n"):
            if row.strip():
                k, a, b = row.split()
                done[int(k)] = float(b) - float(a)
    for k, (off, cmd, comment) in enumerate(cmds):
        where = f"{block.path.name}:{block.line + 1 + off}"
        if any(r.where == where and r.status == "skip" for r in results):
            continue
        res = Result(where, cmd[:160], "ok")
        if k not in done:
            res.status = "fail"
            first_missing = min(j for j in range(len(cmds)) if j not in done and not
                                cmds[j][1].startswith("pip install"))
            res.error = (f"exit {proc.returncode}: {output_tail}" if k == first_missing
                         else "not run (an earlier command failed)")
            results.append(res)
            log(_line(res))
            continue
        res.seconds = done[k]
        out_file = work / f".walk-out-{k}"
        output = out_file.read_text() if out_file.exists() else ""
        try:
            claimed = claimed_seconds(comment)
            if claimed is not None:
                limit = TIME_FACTOR * claimed + TIME_SLACK_S
                assert res.seconds <= limit, f"took {res.seconds:.0f} s; the docs say {claimed:.0f} s"
                res.claims.append(f"{res.seconds:.0f} s (docs: {claimed:.0f} s)")
            for fn in claims_for(block.path, cmd):
                res.claims.append(fn(work, output))
        except AssertionError as e:
            res.status, res.error = "fail", f"claim: {e}"
        results.append(res)
        log(_line(res))
    assigns = [c for _, c, _ in cmds if re.match(r"^(export\s+)?\w+=", c)]
    return results, "\n".join([prelude, *assigns])


_STATE = re.compile(r"(export\s+)?(\w+=\S*\s*)+|(source|\.|cd)\s+\S+\s*")


def _substitute(cmd: str, llm_url: str | None) -> str:
    if llm_url and "--explainer-url" in cmd:
        cmd = re.sub(r"--explainer-url\s+\S+", f"--explainer-url {llm_url}", cmd)
    return cmd


def _line(r: Result) -> str:
    mark = {"ok": "ok  ", "fail": "FAIL", "skip": "skip"}[r.status]
    extra = f"  [{'; '.join(r.claims)}]" if r.claims else ""
    err = f"\n        {r.error}" if r.error else ""
    return f"{mark} {r.seconds:6.1f}s {r.where:<18} {r.what[:90]}{extra}{err}"


def check_yaml(block: Block, work: Path) -> Result:
    """Parse a yaml block and validate it as its `config` directive says: a class (``pkg.Class [section]``:
    the block, or its section, validated against it) or a loader (``pkg.load_config``: called on the block
    written to a file, as a user's config file would be read)."""
    import importlib

    import yaml

    res = Result(block.where, f"yaml ({block.config or 'parsed only'})", "ok")
    try:
        data = yaml.safe_load(block.code)
        if block.config:
            target, _, section = block.config.partition(" ")
            mod, _, name = target.rpartition(".")
            obj = getattr(importlib.import_module(mod), name)
            if isinstance(obj, type):
                obj.model_validate(data[section] if section else data)
            else:
                path = work / f".walk-{block.path.stem}-{block.line}.yaml"
                path.write_text(block.code)
                with _cwd(work):
                    obj(path)
            res.claims.append(f"valid ({name})")
    except Exception as e:
        res.status, res.error = "fail", f"{type(e).__name__}: {e}"
    return res


def serve_until_up(argv: list[str], timeout: float = 300.0) -> int:
    """`actlab serve ...` in the background until its page answers 200, then stop it (the walk's `serve`)."""
    cmd = [str(Path(sys.executable).parent / "actlab"), *argv]
    port = argv[argv.index("--port") + 1] if "--port" in argv else "8765"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                print(proc.stdout.read() if proc.stdout else "")
                return proc.returncode or 1
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    page = r.read().decode()
                if r.status == 200 and "<html" in page.lower():
                    proc.terminate()
                    said = proc.communicate(timeout=10)[0] if proc.stdout else ""
                    print(said.strip())
                    print(f"(the walk: the page answered on port {port} with {len(page)} bytes; stopped)")
                    return 0
            except OSError:
                time.sleep(1)
        print("the playground did not answer in time")
        return 1
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---------------------------------------------------------------------------------------------- the walk


def walk(shared: Path, work: Path, only: list[str] | None = None, log: Callable[[str], None] = print
         ) -> list[Result]:
    """Walk the docs' blocks in order in ``work`` (``work/../shared`` -> ``shared``)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from openai_server import openai_server
    from test_explain import EXPLAIN, _graded_rule, _rule

    graded = _graded_rule({})

    def llm(messages: list[dict[str, str]], model: str) -> Any:
        """Explains like `tests/test_explain.py`'s rule server, scores with graded logprobs."""
        return _rule(messages, model) if messages[0]["content"] == EXPLAIN else graded(messages, model)

    work.mkdir(parents=True, exist_ok=True)
    link = work.parent / "shared"
    if not link.exists():
        link.symlink_to(shared.resolve(), target_is_directory=True)
    venv = work / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix), target_is_directory=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTLAB_")}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    # the Python quick start: "point actlab at a folder of local models first"
    os.environ["ACTLAB_MODELS_DIR"] = str(work.parent / "shared/models")
    os.environ["HF_HUB_OFFLINE"] = "1"
    results: list[Result] = []
    # one terminal session: the docs' shell blocks run after the README's `export` and `M=... D=...` lines
    session = "\n".join(c for b in blocks(DOCS[0]) if b.lang in RUN_LANGS - {"python"} and not b.skip
                        for _, c, _ in shell_commands(b.code) if _STATE.fullmatch(c))
    with openai_server(llm) as (llm_url, _):
        for path in DOCS:
            if only and path.name not in only:
                continue
            ns: dict[str, Any] = {"__name__": "__doc__"}
            prelude = "" if path == DOCS[0] else session
            for block in blocks(path):
                if block.lang not in RUN_LANGS | CHECK_LANGS:
                    continue
                if block.skip:
                    results.append(Result(block.where, f"{block.lang} block", "skip", error=block.skip))
                    log(_line(results[-1]))
                    continue
                if block.lang in CHECK_LANGS:
                    results.append(check_yaml(block, work))
                    log(_line(results[-1]))
                elif block.lang == "python":
                    results += run_python(block, ns, work, log)
                else:
                    out, prelude = run_shell(block, work, env, prelude, llm_url, log)
                    results += out
    return results


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        return serve_until_up(argv[argv.index("--") + 1:] if "--" in argv else argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("ACTLAB_SHARED_DIR", ROOT.parent / "shared")),
                    help="the shared models/ and data/ folder (default: ../shared)")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a new temporary one)")
    ap.add_argument("--only", action="append", help="walk only this file (README.md, reading.md...); repeatable")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="actlab-walk-")) / "repo"
    print(f"walking the docs in {work}", flush=True)
    t0 = time.perf_counter()
    results = walk(args.shared, work, args.only, log=lambda s: print(s, flush=True))
    n = {s: sum(r.status == s for r in results) for s in ("ok", "fail", "skip")}
    print(f"{n['ok']} ok, {n['fail']} failed, {n['skip']} skipped in {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 1 if n["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
