"""Speed and scale paths give the same numbers as the straightforward ones: prefix-reusing sweeps (every
family, and SmolLM2 on CAA questions), the hand-written SAE step (dense ReLU, sparse TopK) against autograd."""

from __future__ import annotations

import json

import pytest
import torch

from actlab.data import load_ab
from actlab.hooks.additions import Add
from actlab.hooks.points import HookPoint
from actlab.hooks.positions import eoi_start
from actlab.sae import SAEConfig, SparseAutoencoder
from actlab.sae.step import step_gradients
from actlab.steering import SteeringVector, steer
from actlab.steering.evaluate import ab_probabilities, ab_sweep
from actlab.steering.prefix import cell_logits
from actlab.steering.prompts import resolve_style
from conftest import shared_path
from tiny_models import FAMILIES, tiny_model

EOI = [7, 8, 9]


def _rows(seed: int) -> list[list[int]]:
    """Prompts of different lengths with an end-of-instruction sequence and 1-3 tokens after it."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in (12, 7, 15, 9, 11):
        pre = torch.randint(10, 90, (n,), generator=g).tolist()
        post = torch.randint(10, 90, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()
        rows.append([1, *pre, *EOI, *post])
    return rows


def _left_padded(rows):
    w = max(map(len, rows))
    ids = torch.zeros(len(rows), w, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, w - len(r):] = torch.tensor(r)
        mask[b, w - len(r):] = 1
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_cells_sharing_a_prefix_equal_steering_each_cell(family):
    """Prefix KV reuse + several cells per forward (ragged prompts, batches that split the cells and the rows)
    = each cell steered on its own over left-padded full prompts, for from_eoi and all positions."""
    m = tiny_model(family)
    rows = _rows(0)
    g = torch.Generator().manual_seed(1)
    vs = {layer: torch.randn(m.d_model, generator=g) for layer in range(m.n_layers)}
    cells = [{}] + [{HookPoint(layer, kind): mult * vs[layer].double()} for layer, kind in ((0, "resid_pre"),
                    (2, "resid_post")) for mult in (-2.0, 1.0, 3.0)]
    cells.append({HookPoint(1, "resid_pre"): vs[1].double(), HookPoint(2, "resid_post"): -vs[2].double()})
    ids, mask = _left_padded(rows)
    torch.set_grad_enabled(False)
    for positions in ("from_eoi", "all"):
        starts = ([int(eoi_start(torch.tensor([r]), EOI)[0]) for r in rows] if positions == "from_eoi"
                  else [0] * len(rows))
        got = cell_logits(m, rows, starts, cells, batch_size=3, cells_per_batch=4)
        assert got.shape == (len(rows), len(cells), m.vocab_size)
        for ci, cell in enumerate(cells):
            if cell:
                with m.edit(Add(dict(cell), 1.0, positions=positions, eoi_ids=EOI)):
                    ref = m.last_logits(ids, mask)
            else:
                ref = m.last_logits(ids, mask)
            torch.testing.assert_close(got[:, ci], ref, atol=2e-5 * float(ref.abs().max()), rtol=0)
        assert float((got[:, 1] - got[:, 0]).abs().max()) > 0.1  # the additions did something
    torch.set_grad_enabled(True)


def test_without_a_reusable_cache_whole_prompts_still_steer_from_the_boundary(monkeypatch):
    """A cache that cannot be shared falls back to whole prompts, with the additions masked to start at each
    row's boundary: the same numbers as steering from_eoi."""
    import actlab.steering.prefix as prefix

    monkeypatch.setattr(prefix, "_reusable", lambda cache: False)
    m = tiny_model("llama")
    rows = _rows(2)
    starts = [int(eoi_start(torch.tensor([r]), EOI)[0]) for r in rows]
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(3)).double()
    cells = [{}, {HookPoint(1, "resid_pre"): 2 * v}]
    ids, mask = _left_padded(rows)
    with torch.no_grad():
        got = cell_logits(m, rows, starts, cells, batch_size=2, cells_per_batch=2)
        with m.edit(Add({HookPoint(1, "resid_pre"): 2 * v}, 1.0, positions="from_eoi", eoi_ids=EOI)):
            ref = m.last_logits(ids, mask)
        every = m.edit(Add({HookPoint(1, "resid_pre"): 2 * v}, 1.0, positions="all"))
        with every:
            ref_all = m.last_logits(ids, mask)
    torch.testing.assert_close(got[:, 1], ref, atol=2e-5 * float(ref.abs().max()), rtol=0)
    assert float((ref_all - ref).abs().max()) > 1e-3  # masking mattered


def _caa_items(n: int):
    return load_ab(shared_path("data", "caa", "generate", "sycophancy", "generate_dataset.json"))[:n]


@pytest.mark.parametrize("positions", ["auto", "all"])
def test_sweep_equals_cell_by_cell_on_smollm(smollm, positions):
    """The sweep on CAA questions (chat template, prefix reused for from_eoi) = steering each cell in turn."""
    items = _caa_items(4)
    style = resolve_style(smollm)
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector({layer: 4 * torch.randn(smollm.d_model, generator=g) for layer in (3, 12, 20)},
                         "resid_pre", {"model": smollm.name, "n_layers": smollm.n_layers})
    res = ab_sweep(smollm, vec, items, layers=[3, 12, 20], multipliers=[-2.0, 0.0, 1.5], style=style,
                   positions=positions, batch_size=3, cells_per_batch=3)
    pos = "from_eoi" if positions == "auto" else "all"
    base = ab_probabilities(smollm, items, style)
    for layer in (3, 12, 20):
        for mult in (-2.0, 0.0, 1.5):
            if mult == 0:
                ref = base
            else:
                with steer(smollm, vec, mult, layers=[layer], positions=pos):
                    ref = ab_probabilities(smollm, items, style)
            got = torch.tensor(res.cells[f"{layer}:{mult:g}"]["per_question"])
            torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)
    assert float(res.grid().std()) > 1e-3


def test_interrupted_sweep_resumes_part_way(smollm, tmp_path):
    """A sweep stopped after its first batch of questions resumes from the checkpoint and ends where an
    uninterrupted one does."""
    items = _caa_items(5)
    style = resolve_style(smollm)
    g = torch.Generator().manual_seed(1)
    vec = SteeringVector({layer: 4 * torch.randn(smollm.d_model, generator=g) for layer in (5, 10)}, "resid_pre",
                         {"model": smollm.name, "n_layers": smollm.n_layers})
    kw = dict(layers=[5, 10], multipliers=[-1.0, 0.0, 2.0], style=style, batch_size=2)
    full = ab_sweep(smollm, vec, items, **kw)

    class Stop(Exception):
        pass

    def stop_after_first(n: int, **_: object) -> None:
        raise Stop

    with pytest.raises(Stop):
        ab_sweep(smollm, vec, items, out_dir=tmp_path, progress=stop_after_first, **kw)
    saved = json.loads((tmp_path / ".resume" / "steer-sweep.json").read_text())["progress"]["state"]
    assert len(saved["rows_done"]["per_question"]) == 2 and not saved["cells"]
    assert not (tmp_path / "sweep.json").exists()  # results are written when the sweep ends
    seen = []
    again = ab_sweep(smollm, vec, items, out_dir=tmp_path, progress=lambda n, **_: seen.append(n), **kw)
    assert sum(seen) == 3  # only the questions not done before
    torch.testing.assert_close(again.grid(), full.grid(), atol=1e-6, rtol=0)
    assert "rows_done" not in json.loads((tmp_path / ".resume" / "steer-sweep.json").read_text())["progress"]["state"]
    assert set(json.loads((tmp_path / "sweep.json").read_text())["cells"]) == set(full.cells)


# -- SAE step -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("arch", "tied", "with_dead"), [("relu", False, False), ("relu", True, False),
                                                         ("topk", False, False), ("topk", False, True),
                                                         ("topk", True, True)])
def test_hand_written_sae_step_equals_autograd(arch, tied, with_dead):
    """Loss, statistics and every gradient of the fused/sparse step = ``sae.loss(...).backward()``, on inputs
    with an offset and a scale (so the input scale and the decoder bias both matter)."""
    g = torch.Generator().manual_seed(3)
    cfg = SAEConfig(24, 96, architecture=arch, k=5 if arch == "topk" else None, tied=tied, l1_coefficient=0.3)
    sae = SparseAutoencoder(cfg, generator=g)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3, generator=g)
        sae.b_enc.normal_(0, 0.1, generator=g)
    x = 3.0 * torch.randn(300, 24, generator=g) + 1.5
    sae.set_input_scale(x)
    dead = (torch.rand(96, generator=g) < 0.4) if with_dead else None
    kw = dict(dead=dead, aux_coefficient=0.5 if with_dead else 0.0, aux_k=7)
    loss, parts = sae.loss(x, 0.7, **kw)
    sae.zero_grad(set_to_none=True)
    loss.backward()
    ref = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad(set_to_none=True)
    got = step_gradients(sae, x, 0.7, **kw)
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    for key in ("mse", "l1", "aux"):
        torch.testing.assert_close(got[key], parts[key], rtol=1e-5, atol=1e-6)
    if with_dead:
        assert float(got["aux"]) > 0
    torch.testing.assert_close(got["fired"], (parts["codes"] > 0).any(0))
    torch.testing.assert_close(got["l0"], (parts["codes"] > 0).float().sum(-1).mean())
    torch.testing.assert_close(got["x_hat"], parts["x_hat"], rtol=1e-5, atol=1e-5)
    for n, p in sae.named_parameters():
        scale = float(ref[n].abs().max())
        assert scale > 0, n
        torch.testing.assert_close(p.grad, ref[n], rtol=0, atol=2e-5 * scale, msg=n)


# -- past one process (torchrun, 2 gloo processes) -----------------------------------------------------------
def _torchrun(args: list[str], n: int = 2) -> None:
    """``torchrun --nproc_per_node n actlab ...`` as a user runs it (the launcher sets one thread per process)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "actlab",
           *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _one_process(args: list[str]) -> None:
    _torchrun(args, n=1)


def test_torchrun_cache_equals_one_process(tmp_path, tinystories):
    """Two ranks cache disjoint blocks of whole batches into their shards; the one manifest lists them in text
    order and the cached activations equal a one-process run's, number for number."""
    from actlab.sae import CacheReader

    data = shared_path("data", "imdb", "imdb_train_sample.csv")
    base = ["acts", "cache", "tinystories-656k", "--data", str(data), "--points",
            "blocks.0.mlp_out,blocks.1.resid_post", "--limit", "22", "--batch-size", "4", "--shard-tokens",
            "400", "--max-length", "64"]
    _torchrun([*base, "--out", str(tmp_path / "two")])
    _one_process([*base, "--out", str(tmp_path / "one")])
    m2 = json.loads((tmp_path / "two" / "manifest.json").read_text())
    m1 = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert m2["complete"] and m2["world_size"] == 2 and m2["n_tokens"] == m1["n_tokens"]
    assert {sh["file"][:9] for sh in m2["shards"]} == {"shard_r00", "shard_r01"}
    assert [sh["texts"][0] for sh in m2["shards"]] == sorted(sh["texts"][0] for sh in m2["shards"])
    assert not list((tmp_path / "two").glob("manifest.rank*"))
    assert (tmp_path / "two" / "run.json").is_file()
    for point in m1["points"]:
        a = torch.cat([CacheReader(tmp_path / "two", point).load_shard(i) for i in range(len(m2["shards"]))])
        b = torch.cat([CacheReader(tmp_path / "one", point).load_shard(i) for i in range(len(m1["shards"]))])
        assert torch.equal(a, b), point


def test_torchrun_extract_and_sweep_equal_one_process(tmp_path, smollm):
    """Vector extraction (texts split across ranks, activations gathered) and the A/B sweep (questions split,
    probabilities gathered) under 2 processes = 1 process, on CAA sycophancy questions."""
    gen = shared_path("data", "caa", "generate", "sycophancy", "generate_dataset.json")
    test = shared_path("data", "caa", "test", "sycophancy", "test_dataset_ab.json")
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    for tag, launch in (("two", _torchrun), ("one", _one_process)):
        vec = tmp_path / f"{tag}.safetensors"
        launch(["steer", "extract", model, "--data", str(gen), "--out", str(vec), "--limit", "6", "--layers",
                "8,14", "--batch-size", "3"])
        launch(["steer", "sweep", model, "--vector", str(vec), "--data", str(test), "--out", str(tmp_path / tag),
                "--limit", "5", "--multipliers", "-3,0,3", "--batch-size", "2"])
    v2, v1 = SteeringVector.load(tmp_path / "two.safetensors"), SteeringVector.load(tmp_path / "one.safetensors")
    for layer in (8, 14):
        assert torch.equal(v2[layer], v1[layer])
    s2 = json.loads((tmp_path / "two" / "sweep.json").read_text())["cells"]
    s1 = json.loads((tmp_path / "one" / "sweep.json").read_text())["cells"]
    assert s2.keys() == s1.keys() and len(s1) == 6
    for key in s1:
        assert s2[key]["per_question"] == s1[key]["per_question"] and s2[key]["n"] == 5


def test_every_model_loading_command_takes_device_map_and_max_memory():
    """A model larger than one GPU can go through any command: every command that loads a model (it takes
    --dtype) also takes --device-map and --max-memory."""
    import typer

    from actlab.cli.app import app

    def walk(cmd, path: str):
        if hasattr(cmd, "commands"):  # a group
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}".strip())
        else:
            yield path, {o for p in cmd.params for o in getattr(p, "opts", [])}

    loading = [(path, opts) for path, opts in walk(typer.main.get_command(app), "") if "--dtype" in opts]
    assert len(loading) >= 20
    missing = [path for path, opts in loading if not {"--device-map", "--max-memory"} <= opts]
    assert not missing, missing


def test_a_command_that_does_not_split_its_work_refuses_torchrun(capsys, stories260k, monkeypatch):
    from test_cli import run

    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run(["info", "stories260k"], capsys)
    assert code == 2 and "torchrun" in err and "steer sweep" in err


def test_refusal_induce_scores_share_prefixes_and_equal_steering_each(smollm):
    """The refusal pipeline's ``induce`` score of every candidate, computed with shared prefixes and several
    candidates per forward = adding each candidate in turn (Add, positions auto) on real instructions."""
    from actlab.data import load_instructions
    from actlab.steering.apply import eoi_for
    from actlab.steering.prompts import format_prompt
    from actlab.steering.refusal import (
        REFUSAL_PHRASES,
        _last_logits,
        _refusal_logodds,
        induce_scores,
        refusal_token_ids,
    )

    harmless = load_instructions(shared_path("data", "refusal_direction", "splits", "harmless_val.json"))[:5]
    style = resolve_style(smollm)
    texts = [format_prompt(smollm, t, style) for t in harmless]
    ref_ids = torch.tensor(refusal_token_ids(smollm, REFUSAL_PHRASES))
    g = torch.Generator().manual_seed(4)
    cands = [(layer, 3 * torch.randn(smollm.d_model, generator=g)) for layer in (2, 9, 9, 17, 25)]
    got = induce_scores(smollm, texts, style, cands, ref_ids, batch_size=3, cells_per_batch=2)
    for (layer, r), s in zip(cands, got, strict=True):
        with smollm.edit(Add({HookPoint(layer, "resid_pre"): r}, 1.0, eoi_ids=eoi_for(smollm, "auto"))):
            ref = float(_refusal_logodds(_last_logits(smollm, texts, style, 16), ref_ids).mean())
        assert abs(s - ref) < 1e-4 * max(1.0, abs(ref)), (layer, s, ref)
    assert max(got) - min(got) > 0.01


def test_greedy_generations_share_the_prefix_and_equal_one_multiplier_at_a_time(smollm):
    """``steered_generations`` (greedy, from_eoi) runs every multiplier as rows over one shared prefix; the
    texts equal generating multiplier by multiplier under ``steer`` (and unsteered for 0)."""
    from actlab.steering.evaluate import steered_generations
    from actlab.steering.prefix import shared_prefix_generations
    from actlab.steering.prompts import format_prompt

    style = resolve_style(smollm)
    prompts = ["Write one sentence about the sea.", "What is your favourite food?", "Describe a cat."]
    vec = SteeringVector({5: 6 * torch.randn(smollm.d_model, generator=torch.Generator().manual_seed(5))},
                         "resid_post", {"model": smollm.name, "n_layers": smollm.n_layers})
    mults = [0.0, -1.0, 1.5]
    rows = steered_generations(smollm, prompts, vec, layers=[5], multipliers=mults, style=style, max_new_tokens=12,
                               batch_size=2)
    texts = [format_prompt(smollm, p, style) for p in prompts]
    for m in mults:
        if m == 0:
            ref = smollm.generate_text(texts, max_new_tokens=12, add_special_tokens=style.add_special_tokens())
        else:
            with steer(smollm, vec, m, layers=[5], positions="from_eoi"):
                ref = smollm.generate_text(texts, max_new_tokens=12, add_special_tokens=style.add_special_tokens())
        assert [r["text"] for r in rows if r["multiplier"] == m] == ref, m
    assert len({r["text"] for r in rows}) > len(prompts)  # the multipliers changed something
    assert shared_prefix_generations(smollm, texts[:1], vec, layers=[5], multipliers=[1.0], style=style,
                                     max_new_tokens=4) is not None


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_rotation_and_ablation_cells_equal_each_cell_applied_alone(family):
    """The engine's other cell kinds: a rotation at one point (angle per row, over the shared prefix) and a
    directional ablation (every token, so whole prompts) = Rotate / ProjectOut applied cell by cell."""
    from actlab.hooks.directions import ProjectOut, Rotate
    from actlab.steering.prefix import CellEdits

    m = tiny_model(family)
    rows = _rows(5)
    g = torch.Generator().manual_seed(6)
    d1, d2 = torch.randn(m.d_model, generator=g), torch.randn(m.d_model, generator=g)
    u1 = d1.double() / d1.double().norm()
    p = HookPoint(1, "resid_post")
    cells = [CellEdits(rotate=(p, u1, a, "by")) for a in (0.0, 45.0, 120.0)] + [
        CellEdits(ablate=(d1, None)), CellEdits(ablate=(d2, (0, 1))), {},
        CellEdits(add={HookPoint(0, "resid_pre"): 2 * d2.double()})]
    starts = [int(eoi_start(torch.tensor([r]), EOI)[0]) for r in rows]
    ids, mask = _left_padded(rows)
    with torch.no_grad():
        got = cell_logits(m, rows, starts, cells, batch_size=2, cells_per_batch=2)
        refs = []
        for a in (0.0, 45.0, 120.0):
            with m.edit(Rotate(d1, a, layers=[1], kind="resid_post", positions="from_eoi", eoi_ids=EOI)):
                refs.append(m.last_logits(ids, mask))
        for d, layers in ((d1, None), (d2, [0, 1])):
            with m.edit(ProjectOut(d, layers=layers)):
                refs.append(m.last_logits(ids, mask))
        refs.append(m.last_logits(ids, mask))
        with m.edit(Add({HookPoint(0, "resid_pre"): 2 * d2}, positions="from_eoi", eoi_ids=EOI)):
            refs.append(m.last_logits(ids, mask))
    for ci, ref in enumerate(refs):
        torch.testing.assert_close(got[:, ci], ref, atol=2e-5 * float(ref.abs().max()), rtol=0)
    torch.testing.assert_close(got[:, 0], got[:, 5], atol=2e-5 * float(refs[5].abs().max()), rtol=0)  # 0 degrees
    assert float((got[:, 2] - got[:, 5]).abs().max()) > 1e-3 and float((got[:, 3] - got[:, 5]).abs().max()) > 1e-3


def test_cell_generations_equal_one_generate_per_cell(smollm):
    """Greedy generations of additions, a rotation and an ablation as rows (one generate per group) = one
    generate() per cell under the same intervention."""
    from actlab.hooks.directions import ProjectOut, Rotate
    from actlab.steering.apply import eoi_for
    from actlab.steering.prefix import CellEdits, cell_generations
    from actlab.steering.prompts import format_prompt

    style = resolve_style(smollm)
    texts = [format_prompt(smollm, p, style) for p in ("Describe the sea.", "What do you like to eat?")]
    g = torch.Generator().manual_seed(7)
    v = 6 * torch.randn(smollm.d_model, generator=g)
    u = v.double() / v.double().norm()
    p = HookPoint(8, "resid_post")
    cells = [CellEdits(), CellEdits(add={p: v.double()}), CellEdits(rotate=(p, u, 90.0, "by")),
             CellEdits(ablate=(v, None))]
    got = cell_generations(smollm, texts, cells, add_special_tokens=False, positions="from_eoi", max_new_tokens=8,
                           batch_size=2, cells_per_batch=4)
    eoi = eoi_for(smollm, "from_eoi")
    refs = [[], [Add({p: v}, positions="from_eoi", eoi_ids=eoi)],
            [Rotate(v, 90.0, layers=[8], kind="resid_post", positions="from_eoi", eoi_ids=eoi)], [ProjectOut(v)]]
    for ci, ivs in enumerate(refs):
        with smollm.edit(*ivs):
            ref = smollm.generate_text(texts, max_new_tokens=8, add_special_tokens=False)
        assert [row[ci] for row in got] == ref, ci
    assert len({tuple(row) for row in zip(*got, strict=True)}) > 1
