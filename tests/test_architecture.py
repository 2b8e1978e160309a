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
    "distributions": 0,
    "data": 1, "hooks": 1,          # datasets; hook points, capture, interventions (on a protocol, not Model)
    "checks": 1,                    # input checks that run before a model loads
    "models": 2,                    # loading, adapters, Model (implements the hooks protocol)
    "lens": 3, "patching": 3, "tuned_lens": 3,
    "steering": 4, "analysis": 4, "sae": 4, "finetune": 4, "crosscoder": 4, "explain": 4,
    "transcoder": 4,  # features
    "report": 5,                    # draws results; never computes an analysis
    "lfp": 6, "jobs": 6, "demo": 6, "eval": 6,  # workflows: own run folders, call features, draw via report
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


# -- one steering path, one resume format (issue 21) -----------------------------------------------------------
# functions outside hooks/additions.py allowed to return "their input + something", and why
NOT_STEERING = {
    ("hooks/attention.py", "_masked"): "adds the attention mask to the scores",
    ("sae/features.py", "edit"): "a feature edit: the decoder rows scaled by the features' own activations",
}


def _adds_to_first_argument(fn: ast.FunctionDef | ast.Lambda) -> bool:
    args = [a.arg for a in fn.args.args if a.arg != "self"]
    if not args:
        return False
    values = [fn.body] if isinstance(fn, ast.Lambda) else [n.value for n in ast.walk(fn) if isinstance(n, ast.Return)]
    return any(isinstance(v, ast.BinOp) and isinstance(v.op, ast.Add) and isinstance(v.left, ast.Name)
               and v.left.id == args[0] for v in values)


def test_steering_arithmetic_lives_in_one_module():
    """Adding a direction to an activation is hooks/additions.py's alone (the prefix engine had a second copy):
    no other function returns its activation plus something, except the listed non-steering ones; and no module
    outside hooks/ computes token positions from the KV-cache offset (hooks/positions.py's Boundary does)."""
    offenders = []
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (rel != "hooks/additions.py" and isinstance(node, ast.FunctionDef) and _adds_to_first_argument(node)
                    and (rel, node.name) not in NOT_STEERING):
                offenders.append(f"{rel}:{node.lineno} {node.name}")
            if not rel.startswith("hooks/") and isinstance(node, ast.Attribute) and node.attr == "past_len":
                offenders.append(f"{rel}:{node.lineno} reads past_len")
    assert not offenders, offenders


def test_the_checker_finds_a_second_steering_engine(tmp_path):
    """It would have caught the prefix engine's own adder."""
    src = "def _row_adder(delta):\n    def add(x):\n        d = delta\n        return x + d\n    return add\n"
    fns = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef)]
    assert [f.name for f in fns if _adds_to_first_argument(f)] == ["add"]


RESUME_WORDS = {"partial", "stages", "trainer.json", "candidates.safetensors", "checkpoints", "step_", ".resume",
                "manifest.rank", "n_texts_done_rank"}


def test_only_runs_writes_resume_state():
    """What is done, and with which settings, is runs.Resume's format only: no module outside runs.py names the
    marker files and folders the five resume formats of the past used (LFP stages/, the sweep's partial, the
    cache's per-rank manifests, refusal's candidates file, SAE checkpoints/step_*)."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path == SRC / "runs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                hits = [w for w in RESUME_WORDS if node.value == w or (node.value.startswith(w) and len(w) > 6)]
                if hits:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders


@pytest.mark.parametrize("module", ["hooks/interventions.py", "lfp/pipeline.py"])
def test_the_split_files_stay_small(module):
    n = len((SRC / module).read_text(encoding="utf-8").splitlines())
    assert n <= 450, f"{module} has {n} lines; split it by concept (docs/architecture.md says where things go)"


def test_no_package_name_shadows_its_submodule():
    """`import actlab.steering.ablation` must give the module: a package may not bind a submodule's name to
    something else (the function `ablate` once hid the module of that name)."""
    import importlib
    import types

    bad = []
    for init in SRC.rglob("__init__.py"):
        pkg_name = _module_name(init)
        pkg = importlib.import_module(pkg_name)
        for sub in init.parent.glob("*.py"):
            if sub.stem == "__init__":
                continue
            value = pkg.__dict__.get(sub.stem)
            if value is not None and not isinstance(value, types.ModuleType):
                bad.append(f"{pkg_name}.{sub.stem} is a {type(value).__name__}")
    assert not bad, bad


def test_steering_vector_apply_is_the_one_path():
    """steering-vectors' `vec.apply(model, ...)` spelling: the same numbers as `model.edit(Steer(...))`."""
    import torch

    from actlab.steering import Steer, SteeringVector
    from tiny_models import tiny_model

    m = tiny_model("llama")
    vec = SteeringVector({1: torch.randn(m.d_model, generator=torch.Generator().manual_seed(0))}, "resid_post")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), vec.apply(m, 3.0, positions="all"):
        a = m(input_ids=ids).logits
    with torch.no_grad(), m.edit(Steer(vec, 3.0, positions="all")):
        b = m(input_ids=ids).logits
    with torch.no_grad():
        plain = m(input_ids=ids).logits
    assert torch.equal(a, b) and not torch.allclose(a, plain)


def test_both_lenses_speak_one_protocol():
    from actlab.lens import Lens, LogitLens
    from actlab.tuned_lens import TunedLens

    assert isinstance(LogitLens(), Lens) and isinstance(TunedLens(8, 2), Lens)
