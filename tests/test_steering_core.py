"""Steering, mixing and ablation invariants on tiny random-init models (token ids, no tokenizer)."""

from __future__ import annotations

import pytest
import torch

from actlab.errors import InputError
from actlab.hooks import count_hooks
from actlab.hooks.additions import Add
from actlab.hooks.points import HookPoint
from actlab.steering import SteeringVector, ablate, add_vectors, orthogonalize, steer
from tiny_models import V, tiny_model

ORTH_FAMILIES = ["llama", "qwen2", "gemma", "phi3", "gpt2", "gpt_neox", "gpt_neo", "gptj", "opt"]


def _vec(model, layers, seed=0, point="resid_post"):
    g = torch.Generator().manual_seed(seed)
    width = model.d_mlp if point == "mlp_hidden" else model.d_model
    return SteeringVector({i: torch.randn(width, generator=g) for i in layers}, point,
                          {"model": model.name, "n_layers": model.n_layers})


def _ids(b, t, seed=0):
    return torch.randint(3, V, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "opt"])
@pytest.mark.parametrize("kind", ["resid_pre", "resid_mid", "attn_out", "mlp_out", "resid_post"])
def test_steering_adds_exactly_the_vector(family, kind):
    m = tiny_model(family)
    v = _vec(m, [1], point=kind)
    ids = _ids(2, 6)
    name = f"blocks.1.{kind}"
    with m.capture(name) as clean:
        m(input_ids=ids)
    before = count_hooks(m.hf)
    with steer(m, v, 2.5), m.capture(name) as steered:
        m(input_ids=ids)
    assert count_hooks(m.hf) == before
    torch.testing.assert_close(steered[name], clean[name] + 2.5 * v[1], atol=1e-5, rtol=1e-5)


def test_several_vectors_sum_and_nothing_is_left():
    m = tiny_model("llama")
    a, b = _vec(m, [0, 2], 1), _vec(m, [2], 2)
    ids = _ids(1, 5)
    before = count_hooks(m.hf)
    with steer(m, [a, b], [1.0, -0.5]):
        out_two = m(input_ids=ids).logits
    combined = SteeringVector({0: a[0], 2: a[2] - 0.5 * b[2]}, "resid_post", {})
    with steer(m, combined, 1.0):
        out_one = m(input_ids=ids).logits
    torch.testing.assert_close(out_two, out_one, atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="inside"), steer(m, a, 1.0):
        raise RuntimeError("inside")
    assert count_hooks(m.hf) == before
    torch.testing.assert_close(m(input_ids=ids).logits, m(input_ids=ids).logits)


def _gen(m, ids, mask, n=6, **kw):
    return m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0, **kw)


@pytest.mark.parametrize("policy", ["all", "generated", "from_eoi"])
def test_batched_left_padded_generation_equals_single_rows(policy):
    m = tiny_model("llama")
    v = _vec(m, [1, 2], 3)
    eoi = [7, 8]
    rows = [torch.tensor([11, 12, 13, 14, 7, 8]), torch.tensor([21, 22, 7, 8])]
    width = max(len(r) for r in rows)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r):], mask[b, width - len(r):] = r, 1
    adds = {HookPoint(i, "resid_post"): v[i] for i in v.layers}
    with m.edit(Add(adds, 3.0, positions=policy, eoi_ids=eoi)):
        batched = _gen(m, ids, mask)
    for b, r in enumerate(rows):
        with m.edit(Add(adds, 3.0, positions=policy, eoi_ids=eoi)):
            single = _gen(m, r[None], torch.ones(1, len(r), dtype=torch.long))
        assert batched[b, width:].tolist() == single[0, len(r):].tolist()
    with torch.no_grad():
        plain = _gen(m, ids, mask)
    assert not torch.equal(plain, batched)  # the steering did something


@pytest.mark.parametrize("policy", ["all", "generated"])
def test_kv_cache_and_no_cache_agree(policy):
    m = tiny_model("gpt2")
    v = _vec(m, [0, 1], 4)
    ids = _ids(1, 5, 4)
    adds = {HookPoint(i, "resid_post"): v[i] for i in v.layers}
    with m.edit(Add(adds, 2.0, positions=policy)):
        cached = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                            pad_token_id=0, use_cache=True)
    with m.edit(Add(adds, 2.0, positions=policy)):
        uncached = m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                              pad_token_id=0, use_cache=False)
    assert cached.tolist() == uncached.tolist()


def test_generated_policy_leaves_the_prompt_alone():
    m = tiny_model("llama")
    v = _vec(m, [1])
    ids = _ids(2, 5, 5)
    with m.capture("blocks.1.resid_post") as clean:
        m(input_ids=ids)
    with m.edit(Add({HookPoint(1, "resid_post"): v[1]}, 5.0, positions="generated")), \
            m.capture("blocks.1.resid_post") as steered:
        m(input_ids=ids)
    torch.testing.assert_close(steered["blocks.1.resid_post"], clean["blocks.1.resid_post"])


def test_mixing_another_prompts_activation():
    m = tiny_model("llama")
    src = _ids(1, 4, 6)
    with m.capture("blocks.0.attn_out", positions="tokens") as acts:
        m(input_ids=src)
    mean_attn = acts["blocks.0.attn_out"].mean(0)
    ids = _ids(1, 5, 7)
    with m.capture("blocks.0.resid_mid") as clean:
        m(input_ids=ids)
    with add_vectors(m, {"blocks.0.attn_out": mean_attn}, 0.5), m.capture("blocks.0.resid_mid") as mixed:
        m(input_ids=ids)
    torch.testing.assert_close(mixed["blocks.0.resid_mid"], clean["blocks.0.resid_mid"] + 0.5 * mean_attn,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ORTH_FAMILIES)
def test_hook_ablation_equals_weight_orthogonalisation(family):
    m = tiny_model(family)
    r = torch.randn(m.d_model, generator=torch.Generator().manual_seed(8))
    ids = _ids(2, 7, 9)
    with torch.no_grad():
        clean = m(input_ids=ids).logits
        with ablate(m, r), m.capture("resid_post") as acts:
            hooked = m(input_ids=ids).logits
        orth = orthogonalize(m, r)
        baked = orth(input_ids=ids).logits
    ru = r / r.norm()
    for name, x in acts.items():  # the direction is gone from the stream at every layer
        assert float((x @ ru).abs().max()) < 1e-4, name
    assert not torch.allclose(clean, hooked, atol=1e-3)
    torch.testing.assert_close(baked, hooked, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(m(input_ids=ids).logits, clean)  # the original is untouched (a copy was edited)
    assert count_hooks(orth.hf) == 0


@pytest.mark.parametrize("family", ORTH_FAMILIES)
def test_orthogonalising_a_layer_subset_equals_hook_ablation_of_those_writes(family):
    """`steer ablate --layers`: the copy with only layers 1..2 orthogonalised equals ProjectOut of attn_out and
    mlp_out at those layers (issue 12: ablation on a subset of layers)."""
    from actlab import ProjectOut
    from actlab.hooks.points import WRITE_KINDS

    m = tiny_model(family)
    r = torch.randn(m.d_model, generator=torch.Generator().manual_seed(18))
    ids = _ids(2, 7, 19)
    with torch.no_grad():
        clean = m(input_ids=ids).logits
        with m.edit(ProjectOut(r, layers="1-2", kinds=WRITE_KINDS)):
            hooked = m(input_ids=ids).logits
        baked = orthogonalize(m, r, layers="1-2")(input_ids=ids).logits
        everywhere = orthogonalize(m, r)(input_ids=ids).logits
    assert not torch.allclose(clean, hooked, atol=1e-3) and not torch.allclose(everywhere, baked, atol=1e-3)
    torch.testing.assert_close(baked, hooked, atol=2e-4, rtol=1e-4)


def test_orthogonalisation_refused_for_post_norm_families():
    m = tiny_model("gemma2")
    with pytest.raises(InputError, match="hook ablation"):
        orthogonalize(m, torch.ones(m.d_model))


def test_bad_steering_input():
    m = tiny_model("llama")
    v = _vec(m, [1])
    with pytest.raises(InputError, match="policy"):
        steer(m, v, 1.0, positions="everywhere")
    with pytest.raises(InputError, match="empty"):
        steer(m, v, 1.0, layers=[])
    wide = SteeringVector({1: torch.ones(48)}, "resid_post", {})
    with pytest.raises(Exception, match=r"width 48.*32"):
        steer(m, wide, 1.0)
    far = SteeringVector({7: torch.ones(32)}, "resid_post", {})
    with pytest.raises(Exception, match=r"layers \[7\].*0\.\.2"):
        steer(m, far, 1.0)
    with pytest.raises(InputError, match="no layer 0"):
        steer(m, v, 1.0, layers=[0])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_ablation_in_float64_equals_orthogonalisation_to_round_off(family):
    """Issue 25 defect: the direction was made unit in float32 whatever the model's dtype (1.7e-6 on a float64
    model), so hook ablation and the baked copy differed by more than round-off. In float64 they agree to 1e-12
    and the direction is gone from the stream to 1e-12."""
    m = tiny_model(family)
    m.hf.double()
    r = torch.randn(m.d_model, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ids = _ids(2, 7, 9)
    with torch.no_grad():
        with ablate(m, r), m.capture("resid_post", dtype=None) as acts:
            hooked = m(input_ids=ids).logits
        baked = orthogonalize(m, r)(input_ids=ids).logits
    assert hooked.dtype == torch.float64 and all(x.dtype == torch.float64 for x in acts.values())
    ru = r / r.norm()
    for name, x in acts.items():
        assert float((x @ ru).abs().max()) < 1e-12, name
    assert float((baked - hooked).abs().max()) < 1e-12
