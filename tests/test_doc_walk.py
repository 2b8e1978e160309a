"""The docs walk (`tests/doc_walk.py`): its parsing and claim matching here, in every run; the walk itself,
every README and docs code block run with its claims checked, under `make test-docs` (``-m docwalk``, about
20 minutes on 2 CPU cores, needs ../shared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import doc_walk as dw


def test_every_runnable_block_is_walked_or_says_why_not():
    seen = 0
    for path in dw.DOCS:
        for block in dw.blocks(path):
            if block.lang in dw.RUN_LANGS:
                seen += 1
                assert block.skip is None or len(block.skip) > 10, f"{block.where}: skip without a reason"
            if block.lang == "yaml":
                assert block.config, f"{block.where}: a yaml block names the config it must validate against"
    assert seen >= 20


def test_every_hand_written_claim_still_has_its_line():
    assert dw.stale_claims() == []


def test_value_claims_parse_as_the_docs_write_them():
    names = {"torch": torch}
    assert dw.claimed_value("~0.77; res.to_dict() is JSON-ready", names)[:2] == (True, 0.77)
    assert dw.claimed_value("torch.Size([2, 576]), on CPU, float32", names)[1] == torch.Size([2, 576])
    assert dw.claimed_value("0 = corrupted run, 1 = clean run", names) is None  # prose
    assert dw.claimed_value("[layer, position]: 0 = corrupted", names) is None
    assert dw.claimed_value("family, layers, d_model ...", names) is None
    approx, claim, _ = dw.claimed_value("[{'kind': 'steer', 'layers': [12], ...}, {'kind': 'x', ...}, ...]", names)
    assert dw.matches(claim, [{"kind": "steer", "layers": [12], "m": 4.0}, {"kind": "x"}, {"kind": "y"}], approx)
    assert not dw.matches(claim, [{"kind": "steer", "layers": [10]}, {"kind": "x"}], approx)
    assert not dw.matches(claim, [{"kind": "steer", "layers": [12]}], approx)  # shorter than the prefix


def test_matching_is_strict_unless_the_docs_say_otherwise():
    assert dw.matches(0.77, torch.tensor(0.80), approx=True)
    assert not dw.matches(0.77, torch.tensor(0.85), approx=True)
    assert not dw.matches(0.77, 0.78, approx=False)
    assert dw.matches(["a", "b"], ["a", "b"], False) and not dw.matches(["a", "b"], ["a", "b", "c"], False)
    assert not dw.matches({"a": 1}, {"a": 1, "b": 2}, False)  # no `...`: the same keys


def test_shell_lines_join_continuations_and_keep_their_comments():
    code = ('M=x D=y\nactlab lens $M --prompt "a # b" \\\n    --top-k 5   # ~11 s\n# a comment line\n'
            'actlab info stories260k   # ~8 s, 19 MB\n')
    cmds = dw.shell_commands(code)
    assert [c for _, c, _ in cmds] == ["M=x D=y", 'actlab lens $M --prompt "a # b" --top-k 5',
                                       "actlab info stories260k"]
    assert [dw.claimed_seconds(n) for _, _, n in cmds] == [None, 11, 8]
    assert dw.claimed_seconds("1 min 48 s; preference accuracy 0.875") == 108
    assert dw._STATE.fullmatch("export ACTLAB_MODELS_DIR=../shared/models") and dw._STATE.fullmatch("M=a D=b")
    assert not dw._STATE.fullmatch("actlab info x")


@pytest.mark.docwalk
def test_the_docs_walk(tmp_path):
    shared = Path(os.environ.get("ACTLAB_SHARED_DIR", dw.ROOT.parent / "shared"))
    if not (shared / "models").is_dir():
        pytest.skip(f"the shared models and data are not at {shared} (set ACTLAB_SHARED_DIR)")
    results = dw.walk(shared, tmp_path / "repo")
    failed = [r for r in results if r.status == "fail"]
    assert not failed, "\n".join(dw._line(r) for r in failed)
    assert sum(r.status == "ok" for r in results) >= 60
