"""``actlab report RUN_DIR``: one self-contained offline HTML page for everything a run directory holds.

Every run folder (one with a ``run.json``) and every folder of results inside one (an LFP stage, say) becomes a
section; folders that only hold artifacts - saved models, dictionaries, activation caches, checkpoints, reply
caches - are listed with their size in the section above them, not rendered. The contents table names each
section's command, status and duration; with more than :data:`OPEN_SECTIONS` sections each section's body is
folded (one click opens it). In a section: the run record (``run.json``), each JSON result rendered as tables
(with the PNGs whose names start like the JSON file beside it), the other PNGs, CSV files as tables, and a list
of the remaining artifacts (vectors, checkpoints) with their sizes.
Images are embedded as data URIs and every string from the run is escaped, so the page makes no request
and no token text can inject markup.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..runs import CHECKPOINTS
from . import sections
from .html import Page, esc, num, number, tok
from .sections import Context, details

MAX_ROWS = 60
MAX_JSON_BYTES = 32 * 2**20  # larger results are listed, not parsed
OPEN_SECTIONS = 6  # a report with more sections folds each section's body
_SKIP_SUFFIXES = (".tmp",)
# folders that only ever hold internals (reply caches, checkpoints, TRL's output)...
_INTERNAL_DIRS = {"llm_cache", "judge_cache", CHECKPOINTS, "trl"}
# ...and the JSON files an artifact folder holds beside its weights (model, tokenizer, dictionary, cache shards)
_ARTIFACT_JSON = {"cfg.json", "config.json", "manifest.json", "state.json", "generation_config.json",
                  "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.json",
                  "added_tokens.json", "vocab.json", "model.safetensors.index.json"}


def _scalar(x: Any) -> bool:
    return x is None or isinstance(x, (str, int, float, bool))


def _rounded(x: Any) -> Any:
    """Floats to 4 significant digits inside lists and dicts (the file keeps full precision)."""
    if isinstance(x, float):
        return float(f"{x:.4g}")
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return x


def _fmt(x: Any) -> Any:
    if isinstance(x, float):
        return x
    if isinstance(x, (dict, list)):
        s = json.dumps(_rounded(x), ensure_ascii=False)
        return s if len(s) <= 160 else s[:157] + "..."
    return "" if x is None else x


def _table_of_dicts(page: Page, rows: list[dict[str, Any]], max_rows: int = 12) -> None:
    cols: list[str] = []
    for r in rows[:max_rows]:
        for k in r:
            if k not in cols and len(cols) < 10:
                cols.append(k)
    page.table(cols, [[_fmt(r.get(c)) for c in cols] for r in rows[:max_rows]])
    if len(rows) > max_rows:
        page.text(f"({len(rows) - max_rows} more rows in the file)", muted=True)


def render_value(page: Page, obj: Any, name: str = "file") -> None:
    """Generic rendering for a result no curated section knows: its scalar fields as a small table, a list of
    records as a short table, everything else folded (``<details>``) so the page stays short."""
    if isinstance(obj, list):
        if obj and all(isinstance(r, dict) for r in obj):
            _table_of_dicts(page, obj)
        elif all(_scalar(x) for x in obj):
            page.text(", ".join(str(x) for x in obj[:60]) + (" ..." if len(obj) > 60 else ""))
        else:
            details(page, obj, name)
        return
    if not isinstance(obj, dict):
        page.text(str(obj))
        return
    scalars = [(k, v) for k, v in obj.items() if _scalar(v) or (isinstance(v, list) and len(v) <= 12
                                                               and all(_scalar(x) for x in v))]
    if scalars:
        page.table(["field", "value"], [[k, _fmt(v)] for k, v in scalars[:30]])
        if len(scalars) > 30:
            page.text(f"({len(scalars) - 30} more fields in the file)", muted=True)
    shown = {k for k, _ in scalars}
    for k, v in obj.items():
        if k in shown:
            continue
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v) and len(v) <= 12:
            page.heading(str(k))
            _table_of_dicts(page, v)
        else:
            details(page, v, str(k))


def _render_dots(page: Page, obj: dict[str, Any]) -> None:
    for row in obj.get("results", []):
        dots = [number(d, "dot product") for d in row.get("dots", [])]
        scale = max((abs(d) for d in dots), default=1.0) or 1.0
        spans = []
        for t, d in zip(row.get("tokens", []), dots, strict=False):
            a = min(abs(d) / scale, 1.0)
            color = f"rgba(39,174,96,{a:.2f})" if d >= 0 else f"rgba(192,57,43,{a:.2f})"
            spans.append(f'<span title="{d:.3f}" style="background:{color}">{esc(t)}</span>')
        page.html(f"<p><b>{esc(row.get('prompt', ''))}</b> {''.join(spans)}</p>")
        if row.get("lens_top"):  # the joint per-token table
            page.table(["token", "dot", "logit lens top (p)"], [
                [repr(t), f"{d:+.3f}", f"{lt!r} ({number(lp, 'probability'):.2f})"]
                for t, d, lt, lp in zip(row.get("tokens", []), dots, row["lens_top"], row.get("lens_top_prob", []),
                                        strict=False)])
    page.text("Green: positive dot product with the unit direction; red: negative; opacity: magnitude. The "
              "table gives each generated token's dot product beside the logit lens's top token at the same "
              "layer and point (what that layer already predicts next).", muted=True)


def _render_lens(page: Page, obj: dict[str, Any]) -> None:
    if "summary" in obj:
        _table_of_dicts(page, obj["summary"])
    for res in obj.get("results", []):
        for pr in res.get("prompts", []):
            page.heading(f"Prompt: {pr.get('prompt', '')}")
            rows = []
            for kind, entries in pr.get("points", {}).items():
                for e in entries:
                    top = ", ".join(f"{tok(str(t['token']))} {num(t['prob'], '.2f')}" for t in e.get("top", [])[:3])
                    rows.append([esc(kind), esc(e.get("layer")), top,
                                 esc(num(e.get("target_prob", float("nan")), ".3f"))])
            page.table(["point", "layer", "top tokens", "p(target)"], rows, raw_cells=True)


def _render_top_examples(page: Page, obj: dict[str, Any]) -> None:
    from .sae import render_top_examples

    render_top_examples(page, obj)


def _render_dashboards(page: Page, obj: dict[str, Any]) -> None:
    from .features import render_dashboards

    render_dashboards(page, obj)


_RENDERERS = {"direction_dots": _render_dots, "top_examples": _render_top_examples,
              "feature_dashboards": _render_dashboards}


def _render_json(page: Page, path: Path, ctx: Context | None = None) -> None:
    """A JSON file through its curated section (``sections``) or its kind's renderer; a file that does not have
    the shape its kind promises (edited by hand, written by another version) falls back to the generic tables
    with a note, never a crash."""
    if path.stat().st_size > MAX_JSON_BYTES:
        page.text(f"({path.name} is {_size(path.stat().st_size)}; not shown)", muted=True)
        return
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        page.text(f"(could not read {path.name}: {e})", muted=True)
        return
    except RecursionError:
        page.text(f"(could not read {path.name}: nested too deeply)", muted=True)
        return
    ctx = ctx or Context(path, {})
    kind = obj.get("kind") if isinstance(obj, dict) else None
    special = sections.find(path, obj)
    if special is None:
        special = _RENDERERS.get(kind) if isinstance(kind, str) else None
        if special is None and isinstance(obj, dict) and "results" in obj and path.stem == "lens":
            special = _render_lens
        if special is not None:
            legacy = special
            special = lambda pg, o, c: legacy(pg, o)  # noqa: E731
    if special is not None:
        trial = page.fork()
        claimed = set(ctx.claimed)
        try:
            special(trial, obj, ctx)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            ctx.claimed = claimed
            page.text(f"({path.name} does not have the fields a {kind or path.stem} result has "
                      f"({type(e).__name__}: {e}); shown as plain tables)", muted=True)
        else:
            page.merge(trial)
            return
    render_value(page, obj, path.name)


def _render_csv(page: Page, path: Path) -> None:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        page.text(f"(could not read {path.name}: {e})", muted=True)
        return
    if rows:
        page.table(rows[0], rows[1:MAX_ROWS + 1])
        if len(rows) > MAX_ROWS + 1:
            page.text(f"({len(rows) - MAX_ROWS - 1} more rows in {path.name})", muted=True)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TB"


def _run_files(root: Path, out_path: Path) -> tuple[list[Path], list[str]]:
    """Regular files under ``root`` (hidden and temp files left out), never through a symbolic link: a link
    in a run folder could otherwise pull any file of the machine into a page that gets shared."""
    files: list[Path] = []
    skipped: list[str] = []
    out_resolved = out_path.resolve()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            if (here / d).is_symlink():
                skipped.append(str((here / d).relative_to(root)))
                dirnames.remove(d)
            elif d.startswith("."):
                dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            p = here / name
            if p.is_symlink():
                skipped.append(str(p.relative_to(root)))
                continue
            if (name.startswith(".") or name.endswith(_SKIP_SUFFIXES) or not p.is_file()
                    or p.resolve() == out_resolved):
                continue
            files.append(p)
    return sorted(files), skipped


def _relative_href(target: Path, page: Path) -> str:
    """A relative URL from the page's folder to ``target`` (each path part percent-encoded)."""
    from urllib.parse import quote

    rel = os.path.relpath(target.resolve(), page.resolve().parent)
    return "/".join(quote(part) for part in Path(rel).parts)


def _is_artifact_folder(folder: Path, here: list[Path], root: Path) -> bool:
    """A folder not worth a section: under a reply-cache / checkpoint / TRL folder, or weights with only their
    config JSONs beside them (a saved model, an SAE, a tuned lens, an activation cache)."""
    if folder == root or (folder / "run.json") in here:
        return False
    if any(part in _INTERNAL_DIRS for part in folder.relative_to(root).parts):
        return True
    if any(p.suffix in (".png", ".csv", ".html") for p in here):
        return False
    results = [p for p in here if p.suffix in (".json", ".jsonl") and p.name not in _ARTIFACT_JSON]
    return not results


def _run_record(folder: Path) -> dict[str, Any]:
    try:
        rec = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    return rec if isinstance(rec, dict) else {}


def _duration(rec: dict[str, Any]) -> str:
    d = rec.get("duration_s")
    if isinstance(d, bool) or not isinstance(d, (int, float)):
        return ""
    return f"{d:.0f} s" if d < 120 else f"{d / 60:.1f} min"


def _summary(rec: dict[str, Any]) -> tuple[str, str, str]:
    """(``actlab COMMAND``, status, duration) of a run record; empty strings for what it lacks."""
    command = rec.get("command") if isinstance(rec.get("command"), str) else ""
    status = rec.get("status") if isinstance(rec.get("status"), str) else ""
    return (f"actlab {command}" if command else "", status, _duration(rec))


def _contents(page: Page, root: Path, sections: list[tuple[Path, str, str, dict[str, Any]]]) -> None:
    """The contents table: each section's folder (linked), the command that wrote it, its status and duration."""
    rows = []
    for folder, rel, anchor, rec in sections:
        depth = 0 if folder == root else len(folder.relative_to(root).parts) - 1
        name = f'{"&nbsp;" * 4 * depth}<a href="#{esc(anchor)}">{esc(rel if depth == 0 else folder.name)}</a>'
        command, status, duration = _summary(rec)
        what = command if command or rec else (
            "(files at the top of the folder)" if folder == root else "(results of the run above)")
        rows.append([name, esc(what), esc(status), esc(duration)])
    page.html("<h2>Contents</h2>")
    page.table(["folder", "command", "status", "duration"], rows, raw_cells=True)


def build_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write ``out`` (default ``RUN_DIR/report.html``) and return its path."""
    root = Path(run_dir)
    if not root.is_dir():
        raise InputError(f"run directory {str(root)!r} does not exist")
    out_path = Path(out) if out else root / "report.html"
    files, skipped = _run_files(root, out_path)
    if not files:
        raise InputError(f"run directory {str(root)!r} is empty")
    page = Page(f"actlab report: {root.name}", f"{len(files)} files under {root}")
    if skipped:
        page.text(f"Not included: {len(skipped)} symbolic link(s) ({', '.join(skipped[:5])}"
                  f"{', ...' if len(skipped) > 5 else ''}); a report shows only what the run folder holds.",
                  muted=True)
    by_folder: dict[Path, list[Path]] = {}
    for p in files:
        by_folder.setdefault(p.parent, []).append(p)
    folders = sorted(by_folder, key=lambda d: (d != root, str(d)))
    shown = [d for d in folders if not _is_artifact_folder(d, by_folder[d], root)]
    if len(shown) > 1 and root in shown and all(p.name == "report.html" for p in by_folder[root]):
        shown.remove(root)  # nothing at the top but an earlier page
    if not shown:  # only artifacts: the first folder is the section that lists the others
        shown = [folders[0]]
    home: dict[Path, Path] = {}  # an artifact folder -> the section that lists it
    for d in folders:
        if d not in shown:
            home[d] = next((a for a in d.parents if a in shown), shown[0])
    rels = ["." if d == root else str(d.relative_to(root)) for d in shown]
    anchors = [(d, rel, "d" + hashlib.sha1(rel.encode()).hexdigest()[:10], _run_record(d))
               for d, rel in zip(shown, rels, strict=True)]
    fold = len(shown) > OPEN_SECTIONS
    if len(shown) > 1:
        page.nav_list = False
        _contents(page, root, anchors)
        if fold:
            page.text(f"{len(shown)} sections, each folded: open one from its heading (or the contents above).",
                      muted=True)
    for folder, rel, anchor, rec in anchors:
        here = by_folder[folder]
        page.section(f"{rel}", anchor)
        if rec:
            page.text(" · ".join(x for x in _summary(rec) if x), muted=True)
        if fold:
            page.html("<details><summary>show this section</summary>")
        claimed: set[Path] = set()
        model_files: set[Path] = set()
        if (folder / "config.json") in here and any(p.suffix == ".safetensors" for p in here):
            # a saved model: its config is worth a table, its tokenizer files are artifacts, not results
            model_files = {p for p in here if p.suffix == ".json" and p.name not in ("config.json", "run.json")}
        names = {p.name: p for p in here}
        own = [n for n in ("index.html", "report.html", "top_examples.html") if n in names
               and names[n].resolve() != out_path.resolve()]
        if own:  # relative links: the page and its run folder can move together (and no absolute path leaks)
            page.html("<p>This folder has its own page: " + ", ".join(
                f'<a href="{esc(_relative_href(names[n], out_path))}">{esc(n)}</a>' for n in own) + "</p>")
            claimed.update(names[n] for n in own)
        pngs = {p.name: p for p in here if p.suffix == ".png"}
        run = folder / "run.json"
        for j in [p for p in here if p.suffix == ".json" and p != run and p not in model_files]:
            page.heading(j.name)
            ctx = Context(j, pngs, claimed, names)
            _render_json(page, j, ctx)
            claimed.add(j)
            for img in [p for p in pngs.values() if p.stem.startswith(j.stem) and p not in claimed]:
                page.image(img, img.name)
                claimed.add(img)
        for img in [p for p in pngs.values() if p not in claimed]:
            page.heading(img.name)
            page.image(img, img.name)
            claimed.add(img)
        stems = {p.stem for p in here if p.suffix == ".json"}
        for c in [p for p in here if p.suffix == ".csv" and p not in claimed and p.stem not in stems]:
            page.heading(c.name)
            _render_csv(page, c)
            claimed.add(c)
        if run in here:
            page.heading("run")
            _render_json(page, run, Context(run, pngs, claimed, names))
            claimed.add(run)
        rest = [[p.name, _size(p.stat().st_size)] for p in here if p not in claimed]
        for d in sorted(a for a, h in home.items() if h == folder):
            inner = by_folder[d]
            where = d.relative_to(folder) if folder in d.parents else d.relative_to(root)
            rest.append([f"{where}/ ({len(inner)} file{'s' if len(inner) != 1 else ''})",
                         _size(sum(p.stat().st_size for p in inner))])
        if rest:
            page.heading("Other artifacts")
            page.table(["file", "size"], rest)
        if fold:
            page.html("</details>")
    return page.write(out_path)
