"""Interventions: one type, one write path, stacked in one `with`, ordered explicitly, recorded in run metadata;
the layer grammar and the eoi boundary they share with the rest of actlab."""

from __future__ import annotations

import json

import pytest
import torch

import actlab
from actlab import Add, ProjectOut, Replace, Run
from actlab.errors import HookPointError, InputError
from actlab.hooks import count_hooks
from actlab.hooks.interventions import active_records
from actlab.hooks.points import HookPoint, parse_layers, parse_points
from actlab.sae import FeatureEdit, SAEConfig, SparseAutoencoder
from actlab.steering import SteeringVector, ablate, steer
from actlab.steering.apply import Mix, Steer, record_activation
from tiny_models import V, tiny_model

FAMILIES = ["llama", "gpt2", "gpt_neox", "gemma2", "opt"]


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, V, (1, n), generator=torch.Generator().manual_seed(seed))


def _three(m):
    g = torch.Generator().manual_seed(3)
    vec = SteeringVector({1: torch.randn(m.d_model, generator=g), 2: torch.randn(m.d_model, generator=g)},
                         "resid_post", {"model": m.name, "n_layers": m.n_layers})
    direction = torch.randn(m.d_model, generator=g)
    torch.manual_seed(5)
    sae = SparseAutoencoder(SAEConfig(d_in=m.d_model, d_sae=2 * m.d_model, hook_point="blocks.1.resid_mid"))
    return vec, direction, sae


@pytest.mark.parametrize("family", FAMILIES)
def test_steer_ablate_and_sae_splice_stack_in_one_with_like_nested(family, tmp_path):
    m = tiny_model(family)
    vec, direction, sae = _three(m)
    ids = _ids(7, 1)
    before = count_hooks(m.hf)
    with torch.no_grad():
        plain = m(input_ids=ids).logits
        with model_edit(m, vec, direction, sae) as ed:
            assert count_hooks(m.hf) > before
            stacked = m(input_ids=ids).logits
            assert [r["kind"] for r in active_records(m)] == ["steer", "project_out", "sae_features"]
        assert count_hooks(m.hf) == before and active_records(m) == []
        with steer(m, vec, 2.0, layers=[1]), ablate(m, direction, layers="0-1"), \
                m.edit(FeatureEdit(sae, "blocks.1.resid_mid", ablate=list(range(0, sae.cfg.d_sae, 2)))):
            nested = m(input_ids=ids).logits
    assert torch.equal(stacked, nested)
    assert not torch.allclose(stacked, plain)
    records = ed.records()
    assert [r["kind"] for r in records] == ["steer", "project_out", "sae_features"]
    assert records[0]["layers"] == [1] and records[0]["multiplier"] == 2.0
    assert records[0]["points"] == ["blocks.1.resid_post"]  # one vocabulary: hook-point names
    assert records[1]["layers"] == [0, 1]
    assert records[1]["points"] == [f"blocks.{i}.{k}" for k in ("resid_pre", "attn_out", "mlp_out") for i in (0, 1)]
    assert records[2]["points"] == ["blocks.1.resid_mid"] and records[2]["ablate"][:2] == [0, 2]
    with Run(tmp_path / "run", "test", {"what": "stacking"}) as run:
        run.add_interventions(records)
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert [r["kind"] for r in meta["interventions"]] == ["steer", "project_out", "sae_features"]
    assert meta["status"] == "ok" and meta["duration_s"] >= 0 and meta["ended"]


def model_edit(m, vec, direction, sae):
    return m.edit(Steer(vec, 2.0, layers=[1]), ProjectOut(direction, layers="0-1"),
                  FeatureEdit(sae, "blocks.1.resid_mid", ablate=list(range(0, sae.cfg.d_sae, 2))))


def test_order_at_one_point_is_the_order_listed():
    m = tiny_model("llama")
    ids = _ids(6, 2)
    p = "blocks.1.resid_post"
    with torch.no_grad():
        with m.edit(Replace(p, lambda x: 2 * x), Replace(p, lambda x: x + 1)), m.capture(p) as ab:
            m(input_ids=ids)
        with m.edit(Replace(p, lambda x: x + 1), Replace(p, lambda x: 2 * x)), m.capture(p) as ba:
            m(input_ids=ids)
        with m.capture(p) as clean:
            m(input_ids=ids)
    torch.testing.assert_close(ab[p], 2 * clean[p] + 1)
    torch.testing.assert_close(ba[p], 2 * (clean[p] + 1))


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gptj"])
def test_composite_kind_additive_and_replacing_paths_agree(family):
    """resid_mid has no module: an addition goes to the attention output directly, a replacement through
    f(resid_pre + a) - resid_pre; both must give resid_mid + v (parallel blocks included)."""
    m = tiny_model(family)
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(4))
    ids = _ids(6, 3)
    p = HookPoint(1, "resid_mid")
    with torch.no_grad():
        with m.capture(p) as clean:
            out0 = m(input_ids=ids).logits
        with m.edit(Add({p: v}, 1.5)), m.capture(p) as added:
            out1 = m(input_ids=ids).logits
        with m.edit(Replace(p, lambda x: x + 1.5 * v)), m.capture(p) as replaced:
            out2 = m(input_ids=ids).logits
    torch.testing.assert_close(added[p], clean[p] + 1.5 * v, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(replaced[p], added[p], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out1, out2, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out0, out1)


def test_a_bad_intervention_installs_nothing_and_exceptions_remove_everything():
    m = tiny_model("llama")
    vec, direction, _ = _three(m)
    before = count_hooks(m.hf)
    with pytest.raises(InputError, match="d_model"):
        m.edit(Steer(vec, 1.0), ProjectOut(torch.ones(m.d_model + 1)))
    assert count_hooks(m.hf) == before
    with pytest.raises(InputError, match="finite"):
        Steer(vec, float("nan"))
    with pytest.raises(InputError, match="zero"):
        ProjectOut(torch.zeros(m.d_model))
    with pytest.raises(InputError, match="interventions"):
        m.edit("not an intervention")
    with pytest.raises(RuntimeError, match="inside"), m.edit(Steer(vec, 1.0), ProjectOut(direction)):
        raise RuntimeError("inside")
    assert count_hooks(m.hf) == before and active_records(m) == []
    handle = m.edit(Steer(vec, 1.0))
    assert count_hooks(m.hf) > before
    handle.remove()
    handle.remove()  # idempotent
    assert count_hooks(m.hf) == before


def test_steer_layers_take_the_layer_grammar():
    m = tiny_model("llama")
    vec = SteeringVector({i: torch.ones(m.d_model) for i in range(3)}, "resid_post", {})
    ids = _ids(5, 6)
    with torch.no_grad():
        with steer(m, vec, 1.0, layers="1-2"):
            a = m(input_ids=ids).logits
        with steer(m, vec, 1.0, layers=[1, 2]):
            b = m(input_ids=ids).logits
        with steer(m, vec, 1.0, layers="-2,-1"):
            c = m(input_ids=ids).logits
    assert torch.equal(a, b) and torch.equal(a, c)


def test_layer_grammar():
    n = 12
    assert parse_layers(None, n) is None and parse_layers("all", n) is None
    assert parse_layers("4,8, 2", n) == [2, 4, 8]
    assert parse_layers("4-8", n) == [4, 5, 6, 7, 8]
    assert parse_layers("0-10:5", n) == [0, 5, 10]
    assert parse_layers("-1", n) == [11] and parse_layers("-3--1", n) == [9, 10, 11]
    assert parse_layers([3, -1], n) == [3, 11] and parse_layers(5, n) == [5]
    for bad in ("4-x", "1-3:x", "12", "8-4", "0-4:0", "", [], "1,,2"):
        with pytest.raises(InputError):
            parse_layers(bad, n)


def test_point_specs_use_the_layer_grammar_inclusively():
    n = 6
    names = [p.name for p in parse_points("blocks.1-3.resid_post", n)]
    assert names == ["blocks.1.resid_post", "blocks.2.resid_post", "blocks.3.resid_post"]
    assert [p.layer for p in parse_points("blocks.0-4:2.mlp_out", n)] == [0, 2, 4]
    assert len(parse_points("blocks.all.attn_out", n)) == n == len(parse_points("blocks.*.attn_out", n))
    with pytest.raises(HookPointError, match="inclusively"):  # the first wave's exclusive slice is gone
        parse_points("blocks.1:4.resid_post", n)
    p = HookPoint(2, "resid_pre")
    assert parse_points([p], n) == [p]  # a parsed point passes through unchanged
    with pytest.raises(HookPointError, match="out of range"):
        parse_points([HookPoint(9, "resid_pre")], n)
    with pytest.raises(HookPointError, match="resid_post"):
        parse_points("blocks.1.resid_psot", n)


def test_activations_are_keyed_by_point_or_name():
    m = tiny_model("gpt2")
    p = HookPoint(1, "resid_post")
    with m.capture([p], positions="last") as acts:
        m(input_ids=_ids(4, 7))
    assert p in acts and torch.equal(acts[p], acts["blocks.1.resid_post"])


@pytest.mark.shared
def test_mix_defaults_to_the_last_token_as_in_the_study(smollm):
    point = "blocks.10.resid_post"
    src = record_activation(smollm, "I love sunny days", point, reduce=-1)
    base = smollm.tokenize("The weather today is")
    with torch.no_grad():
        with smollm.capture(point, positions="last") as clean:
            smollm(**base)
        with smollm.edit(Mix("I love sunny days", point, 2.0)) as ed, smollm.capture(point, positions="last") as mixed:
            smollm(**base)
    torch.testing.assert_close(mixed[point][0] - clean[point][0], 2.0 * src, atol=1e-3, rtol=1e-3)
    rec = ed.records()[0]
    assert rec["kind"] == "mix" and rec["position"] == -1 and rec["source_prompt"] == "I love sunny days"


@pytest.mark.shared
def test_reading_eoi_and_steering_from_eoi_find_one_boundary(smollm):
    """The first token read by 'eoi' is the first token steered by 'from_eoi' (same prompt, same index)."""
    from actlab.steering import PromptStyle, format_prompt
    from actlab.steering.prompts import read_positions

    text = format_prompt(smollm, "Tell me about the weather.", PromptStyle(chat=True))
    first_read = read_positions(smollm, text, "eoi", PromptStyle(chat=True))[0]
    v = torch.ones(smollm.d_model)
    batch = smollm.tokenize(text, add_special_tokens=False)
    with torch.no_grad():
        with smollm.capture("blocks.3.resid_post") as clean:
            smollm(**batch)
        with smollm.edit(Add({"blocks.3.resid_post": v}, 1.0, positions="from_eoi",
                             eoi_ids=actlab.steering.apply.default_eoi_ids(smollm))), \
                smollm.capture("blocks.3.resid_post") as steered:
            smollm(**batch)
    changed = (steered["blocks.3.resid_post"][0] - clean["blocks.3.resid_post"][0]).abs().sum(-1) > 0
    assert int(changed.nonzero()[0]) == first_read
    assert bool(changed[first_read:].all()) and not bool(changed[:first_read].any())
