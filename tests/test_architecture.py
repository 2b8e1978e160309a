"""The architecture stays as docs/architecture.md draws it: layered imports without cycles, the hook-kind table
as the only list of kinds, and the docs' copy of that table in sync with the code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "actlab"
DOCS = Path(__file__).resolve().parents[1] / "docs"

# Rank of every top-level module/package of actlab: an import may only point to the same or a lower rank.
LAYERS: dict[str, int] = {
    # core: no knowledge of models or features
    "errors": 0, "settings": 0, "version": 0, "configs": 0, "runs": 0, "llm": 0, "progress": 0, "parallel": 0,
    "data": 1, "hooks": 1,          # datasets; hook points, capture, interventions (on a protocol, not Model)
    "checks": 1,                    # input checks that run before a model loads
    "models": 2,                    # loading, adapters, Model (implements the hooks protocol)
    "lens": 3, "patching": 3, "tuned_lens": 3,
    "steering": 4, "analysis": 4, "sae": 4, "finetune": 4,   # features: compute, return and write data
    "report": 5,                    # draws results; never computes an analysis
    "lfp": 6, "jobs": 6, "demo": 6,  # workflows: own run folders, call features, draw through report
    "serve": 6,                     # the playground: features and report fragments behind a local HTTP API
    "cli": 7,                       # the edge: parses flags, calls jobs, prints
    "__main__": 8,
}
FEATURES = {name for name, rank in LAYERS.items() if rank <= 4}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every actlab module imported anywhere in a file (also inside functions and
    TYPE_CHECKING blocks)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "actlab")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "actlab":
                continue
            if node.module is None:  # from . import x, y: each may be a submodule
                out.update(f"{target}.{a.name}" for a in node.names)
            else:
                out.add(target)
    return out


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "actlab"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        src = _top(_module_name(path))
        if src == "actlab":
            continue  # the root package is the public facade; it may re-export anything
        for target in _imports(path):
            dst = _top(target)
            if dst != src:
                graph.setdefault(src, set()).add(dst)
        graph.setdefault(src, set())
    return graph


def test_every_top_level_module_has_a_layer():
    missing = sorted(set(_graph()) - set(LAYERS))
    assert not missing, f"give these modules a rank in LAYERS (and in docs/architecture.md): {missing}"


def test_imports_point_down_and_nothing_imports_the_root_package():
    bad = []
    for src, dsts in _graph().items():
        for dst in dsts:
            if dst == "actlab":
                bad.append(f"{src} imports the root package (import from the defining module instead)")
            elif LAYERS.get(dst, 99) > LAYERS.get(src, -1):
                bad.append(f"{src} (rank {LAYERS.get(src)}) imports {dst} (rank {LAYERS.get(dst)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_feature_imports_report_cli_or_workflows():
    bad = [(s, d) for s, ds in _graph().items() if s in FEATURES for d in ds if d in ("report", "cli", "jobs",
                                                                                           "lfp", "demo")]
    assert not bad, bad


def test_package_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(m):], m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_hooks_do_not_know_the_model_class():
    for path in (SRC / "hooks").glob("*.py"):
        assert not any(_top(t) == "models" for t in _imports(path)), path.name


def test_the_import_checker_sees_lazy_and_type_checking_imports(tmp_path):
    """The checker must not be blind: a function-level import and a TYPE_CHECKING import both count."""
    pkg = SRC / "steering"
    sample = pkg / "apply.py"
    names = _imports(sample)
    assert "actlab.hooks.interventions" in names  # module level
    assert "actlab.models.model" in names  # TYPE_CHECKING block
    assert any(n.startswith("actlab.steering.prompts") for n in names)  # inside a function


def _kind_names() -> set[str]:
    from actlab.hooks.points import KINDS

    return set(KINDS)


def test_kinds_are_listed_only_in_the_table():
    """No literal list/tuple/set of three or more hook kinds outside hooks/points.py (specs in one string,
    like "resid_post,attn_out", are user input, not listings)."""
    kinds = _kind_names()
    offenders = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "hooks" / "points.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
                names = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(names & kinds) >= 3:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, offenders


def test_docs_show_the_kind_table_the_code_has():
    from actlab.hooks.points import kinds_table_markdown

    doc = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert kinds_table_markdown() in doc, "regenerate the table in docs/architecture.md from kinds_table_markdown()"


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_docs_place_every_layer(layer_name):
    if layer_name == "__main__":
        return
    doc = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert f"`{layer_name}" in doc, f"docs/architecture.md does not place {layer_name!r}"


def test_cli_help_imports_no_heavy_library():
    """Every `--help` is answered from the CLI's own modules: torch and transformers load only when a command
    runs (bench/bench_cli_startup.py measures the time this keeps). pydantic is not checked: typer itself
    imports it to describe a sub-command's parameters."""
    import subprocess
    import sys

    probe = ("import sys, runpy; sys.argv = ['actlab'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('actlab', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'safetensors') if m in sys.modules))")
    for cmd in ([], ["steer", "sweep"], ["sae", "train"], ["lfp", "run"], ["compare", "hessian"], ["report"]):
        r = subprocess.run([sys.executable, "-c", probe, *cmd, "--help"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().splitlines()[-1] == "[]", (cmd, r.stdout[-300:])
