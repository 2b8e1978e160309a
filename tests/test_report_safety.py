"""No value from a run folder can put markup into a page: every numeric and text field of every result kind a
command writes (the corpus of real results, tests/corpus.py) is replaced in turn by a string carrying markup,
rendered, and checked; the crafted folders are also opened in headless Chromium (no dialog, no injected
element). Reads never follow a symbolic link."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

MARK = "<img src=x onerror=alert(1)>"


def _leaves(obj, path=()):
    """(path, value) of every scalar leaf; list indices are kept so a leaf can be set."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path, obj


def _field(path):
    """A leaf's field: its path with list indices folded (every element of a list is one field)."""
    return tuple("[]" if isinstance(p, int) else p for p in path)


def _set_field(obj, field, value):
    """A copy of ``obj`` with every leaf of ``field`` replaced by ``value``."""
    out = json.loads(json.dumps(obj))
    for path, _ in list(_leaves(out)):
        if _field(path) == field:
            cur = out
            for p in path[:-1]:
                cur = cur[p]
            cur[path[-1]] = value
    return out


def _result_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.json") if not any(part.startswith(".") for part in p.parts)
                  and p.stat().st_size < 4_000_000)


def _render(path: Path) -> str:
    from actlab.report.html import Page
    from actlab.report.run_report import _render_json
    from actlab.report.sections import Context

    page = Page("t")
    _render_json(page, path, Context(path, {}, set(), {p.name: p for p in path.parent.iterdir()}))
    return page.render()


def test_every_field_of_every_result_is_escaped(corpus, tmp_path):
    root, results = corpus
    assert all(code == 0 for code, _, _ in results.values()), {k: v[:2] for k, v in results.items() if v[0]}
    files = _result_files(root)
    kinds = {json.loads(p.read_text()).get("kind") for p in files if isinstance(json.loads(p.read_text()), dict)}
    assert len(files) >= 25 and {"feature_dashboards", "patching", "sae_metrics", "tuned_lens_eval"} <= kinds
    n_fields = 0
    for f in files:
        obj = json.loads(f.read_text())
        fields = sorted({_field(p) for p, v in _leaves(obj) if isinstance(v, (int, float, str))
                         and not isinstance(v, bool)}, key=str)
        work = tmp_path / f.relative_to(root).parent
        work.mkdir(parents=True, exist_ok=True)
        target = work / f.name
        for field in fields:
            target.write_text(json.dumps(_set_field(obj, field, MARK)))
            html = _render(target)
            assert MARK not in html and "<img src=x" not in html, (f.relative_to(root), field)
            n_fields += 1
    assert n_fields > 500


def test_feature_cards_refuse_non_numbers(corpus):
    """The feature page itself (written by the job, opened on its own) type-checks its numbers."""
    from actlab.report.features import feature_card

    root, _ = corpus
    dash = json.loads((root / "sae" / "top" / "top_examples.json").read_text())
    card = dash["features"][0]
    for field in sorted({_field(p) for p, v in _leaves(card) if isinstance(v, (int, float))
                         and not isinstance(v, bool)}, key=str):
        try:
            html = feature_card(_set_field(card, field, MARK))
        except (ValueError, TypeError, KeyError):
            continue
        assert MARK not in html, field


def _crafted(root: Path, out: Path) -> Path:
    """A run folder of every corpus result with all its numbers replaced by markup, plus the issue's crafted
    dashboard (``n_active`` carrying an <img onerror>)."""
    for f in _result_files(root):
        obj = json.loads(f.read_text())
        bad = obj
        for field in {_field(p) for p, v in _leaves(obj) if isinstance(v, (int, float)) and not isinstance(v, bool)}:
            bad = _set_field(bad, field, MARK)
        dest = out / f.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(bad))
    dash = json.loads((root / "sae" / "top" / "top_examples.json").read_text())
    dash["features"][0]["n_active"] = MARK
    (out / "crafted").mkdir()
    (out / "crafted" / "top_examples.json").write_text(json.dumps(dash))
    return out


def test_crafted_run_folder_in_chromium(corpus, tmp_path):
    from actlab.report.run_report import build_report
    from test_analysis import _chromium, chromium_page

    _chromium()
    root, _ = corpus
    folder = _crafted(root, tmp_path / "crafted_run")
    page_path = build_report(folder)
    assert MARK not in page_path.read_text()
    dialogs = []
    with chromium_page() as (page, _console, _requests):
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        page.wait_for_timeout(300)
        injected = page.evaluate("document.querySelectorAll('img[src=\"x\"], img:not([src^=\"data:\"])').length")
        sections = page.evaluate("document.querySelectorAll('h2').length")
    assert dialogs == [] and injected == 0 and sections > 10


def test_report_never_reads_through_a_symbolic_link(corpus, tmp_path):
    from actlab.report.run_report import build_report

    root, _ = corpus
    run = tmp_path / "run"
    shutil.copytree(root / "refusal", run / "refusal")
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps([{"prompt": "SECRET-PROMPT", "before": "SECRET", "after": "SECRET"}]))
    gens = run / "refusal" / "generations.json"
    gens.unlink(missing_ok=True)
    os.symlink(secret, gens)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "index.html").write_text("<p>outside</p>")
    (run / "pages").mkdir()
    os.symlink(tmp_path / "elsewhere" / "index.html", run / "pages" / "index.html")
    (run / "pages" / "note.json").write_text(json.dumps({"a": 1}))
    (run / "sub").mkdir()
    (run / "sub" / "report.html").write_text("<p>a sub-report</p>")
    (run / "sub" / "x.json").write_text(json.dumps({"b": 2}))
    html = build_report(run).read_text()
    assert "SECRET" not in html and str(tmp_path / "elsewhere") not in html and "file://" not in html
    assert 'href="sub/report.html"' in html  # a real page in the folder is linked, relatively


def test_sae_output_through_a_symbolic_link_is_refused(corpus, tmp_path, capsys):
    from test_cli import run

    root, _ = corpus
    out = tmp_path / "sae_run"
    out.mkdir()
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", out / "saes")
    code, _, err = run(["sae", "train", "--cache", str(root / "cache"), "--point", "blocks.2.resid_post",
                        "--expansion", "1", "--steps", "2", "--batch-size", "64", "--out", str(out)], capsys)
    assert code == 2 and "symbolic link" in err and list((tmp_path / "outside").iterdir()) == []


def test_a_folder_of_many_runs_reads_as_runs_not_as_their_internals(tmp_path):
    """Issue 27: `actlab report runs/` over the README walk was 183k px tall, its contents every folder name
    (reply-cache shards, activation caches, checkpoints). Runs and their result folders are sections, named by
    their command in the contents table and folded beyond six; artifact folders are listed with their size."""
    from actlab.report.run_report import OPEN_SECTIONS, build_report

    root = tmp_path / "runs"
    commands = ["steer sweep", "sae train", "lfp run", "eval run", "diff crosscoder", "patch", "layers"]
    for i, cmd in enumerate(commands):
        run = root / f"r{i}"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"command": cmd, "status": "ok", "duration_s": 12.0 + i}))
        (run / "result.json").write_text(json.dumps({"value": i}))
    sae = root / "r1" / "saes" / "relu-2x"
    sae.mkdir(parents=True)
    (sae / "cfg.json").write_text("{}")
    (sae / "sae_weights.safetensors").write_bytes(b"0" * 2048)
    for shard in ("0a", "0b"):
        (root / "r4" / "llm_cache" / shard).mkdir(parents=True)
        (root / "r4" / "llm_cache" / shard / "reply.json").write_text("{}")
    (root / "r4" / "cache" / "base").mkdir(parents=True)
    (root / "r4" / "cache" / "base" / "manifest.json").write_text("{}")
    (root / "r4" / "cache" / "base" / "shard_00000.safetensors").write_bytes(b"0" * 10)
    (root / "r2" / "deltas").mkdir()
    (root / "r2" / "deltas" / "deltas.json").write_text(json.dumps({"layer": 1}))  # a stage's results: a section
    html = build_report(root).read_text()
    titles = re.findall(r"<h2[^>]*>(.*?)</h2>", html)
    assert titles == ["Contents", *[f"r{i}" for i in range(len(commands))][:3], "r2/deltas",
                      *[f"r{i}" for i in range(3, len(commands))]], titles
    assert "llm_cache" in html.split("<h2", 2)[-1]  # listed as an artifact of r4, not a section
    assert "saes/relu-2x/ (2 files)" in html and "llm_cache/0a/ (1 file)" in html
    contents = html.split("</table>", 1)[0]
    assert all(f"actlab {c}" in contents for c in commands) and "(results of the run above)" in contents
    assert len(commands) + 1 > OPEN_SECTIONS and html.count("<details><summary>show this section") == 8
    only = tmp_path / "models"  # nothing but artifact folders: the first is the section listing the others
    for name in ("a", "b"):
        (only / name).mkdir(parents=True)
        (only / name / "config.json").write_text("{}")
        (only / name / "model.safetensors").write_bytes(b"0" * 8)
    html = build_report(only).read_text()
    assert re.findall(r"<h2[^>]*>(.*?)</h2>", html) == ["a"] and "b/ (2 files)" in html


def test_geometry_and_mixing_results_get_curated_sections(corpus):
    """Issue 25: `compare prompting`, `compare curvature`, `compare hessian` and `steer mix` had no curated report
    section (their JSON was shown as raw tables). On the real results: a 'How to read this' note, the figure and
    the numbers, and no fallback."""
    root, _ = corpus
    for folder, name, words in (("prompting", "prompting.json", ["error: addition", "fits better"]),
                                ("curvature", "curvature.json", ["second derivative"]),
                                ("hessian", "hessian.json", ["eigenvalue", "Hessian-vector products"]),
                                ("mix", "mix.json", ["unmixed", "mixed"])):
        html = _render(root / folder / name)
        assert "How to read this" in html and "does not have the fields" not in html, folder
        assert all(w in html for w in words), (folder, words)
