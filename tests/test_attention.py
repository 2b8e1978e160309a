"""Attention internals (q, k, v, pattern, z, result) and user hooks, on every family's tiny model.

Invariants checked against independent computations: the pattern equals softmax(q k^T * scale + mask) built
here from the captured q and k; z equals pattern @ v; the per-head results plus the output bias sum to the
output projection's output (= attn_out except Gemma-2/3, whose attn_out is normed); hooking changes nothing
in the logits; zeroing one head's z equals zeroing its columns of W_O in the weights.
"""

from __future__ import annotations

import pytest
import torch

import actlab
from actlab.hooks.attention import _ROUTES
from actlab.hooks.core import count_hooks
from tiny_models import FAMILIES, tiny_hf_model

INTERNALS = ("attn.q", "attn.k", "attn.v", "attn.pattern", "attn.z", "attn.result", "attn_out")


def _model(family: str, impl: str = "eager") -> actlab.Model:
    hf = tiny_hf_model(family)
    if impl != "eager":
        try:
            hf.set_attn_implementation(impl)
        except (ValueError, AttributeError, ImportError) as e:
            pytest.skip(f"{family} has no {impl} attention here: {e}")
    return actlab.wrap(hf, None, name=f"tiny-{family}")


def _batch(left: bool = True) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(3, 90, (3, 9))
    mask = torch.ones_like(ids)
    if left:
        mask[1, :3] = 0  # row 1 left-padded by 3, row 2 by 1
        mask[2, :1] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _scale(attn: torch.nn.Module, family: str) -> float:
    if family in ("gpt_neo", "opt"):  # GPT-Neo does not scale; OPT's q_proj output is pre-scaled
        return 1.0
    if getattr(attn, "scaling", None) is not None:
        return float(attn.scaling)
    if getattr(attn, "scale_attn", None) is not None:  # GPT-J on transformers 4.x
        return 1.0 / float(attn.scale_attn)
    return attn.head_dim ** -0.5


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_attention_internals_match_an_independent_computation(family, impl):
    if family == "gemma2" and impl == "sdpa":
        pytest.skip("Gemma-2 SDPA: transformers 5 refuses it; 4.x drops the attention softcap that eager applies; a "
                    "hooked pattern layer computes it eagerly, so the two differ by the softcap")
    m = _model(family, impl)
    batch = _batch()
    layer = 1
    o_proj = m.module("attn_o", layer)
    seen = {}
    handle = o_proj.register_forward_hook(lambda mod, a, out: seen.__setitem__("o", out))
    try:
        with torch.no_grad():
            ref = m.hf(**batch).logits
            with m.capture([f"blocks.{layer}.{k}" for k in INTERNALS]) as acts:
                out = m.hf(**batch).logits
    finally:
        handle.remove()
    real = batch["attention_mask"].bool()
    assert torch.equal(out[real], ref[real]), "reading attention internals changed the model"
    q, k, v, pat, z, res, ao = (acts[f"blocks.{layer}.{n}"] for n in INTERNALS)
    b, t, h, d = q.shape
    assert (b, t, h) == (3, 9, m.n_heads) and d == m.d_head
    assert k.shape == v.shape == (b, t, m.n_kv_heads, d) and pat.shape == (b, t, h, t)
    # the pattern from q and k, by hand: causal, padded keys masked, GQA heads repeated
    attn = m.module("attn_core", layer)
    groups = h // k.shape[2]
    kk = k.repeat_interleave(groups, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), kk.double()) * _scale(attn, family)
    cap = getattr(attn, "attn_logit_softcapping", None)
    if cap:
        scores = torch.tanh(scores / cap) * cap
    # captures put each row's real tokens first (the query axis, and the pattern's key axis alike)
    rows = torch.arange(t)[None, :] < real.sum(1)[:, None]
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None] & rows[:, None, None, :]
    if family == "gpt_neo" and m.config.attention_layers[layer] == "local":  # a sliding window of window_size keys
        qi, kj = torch.arange(t)[:, None], torch.arange(t)[None, :]
        allowed = allowed & (qi - kj < m.config.window_size)
    by_hand = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1).permute(0, 2, 1, 3)
    assert torch.allclose(pat[rows].double(), by_hand[rows], atol=1e-5)
    # z is the pattern applied to the values
    vv = v.repeat_interleave(groups, dim=2)
    z_hand = torch.einsum("bqhk,bkhd->bqhd", pat.double(), vv.double())
    assert torch.allclose(z[rows].double(), z_hand[rows], atol=1e-5)
    # per-head results + bias = the output projection's output (= attn_out outside Gemma-2/3)
    bias = getattr(o_proj, "bias", None)
    total = res.sum(2) + (bias if bias is not None else 0)
    o = seen["o"][0] if isinstance(seen["o"], tuple) else seen["o"]
    o = torch.stack([torch.cat([o[i][real[i]], o[i][~real[i]]]) for i in range(b)])  # real tokens first
    assert torch.allclose(total[rows], o.float()[rows], atol=1e-5)
    if family not in ("gemma2", "gemma3_text"):
        assert torch.allclose(total[rows], ao[rows], atol=1e-5)
    # nothing left behind
    assert count_hooks(m.hf) == 0 and not _ROUTES


@pytest.mark.parametrize("family", FAMILIES)
def test_zeroing_a_head_in_a_hook_equals_zeroing_its_weights(family):
    m = _model(family)
    batch = _batch(left=False)
    layer, head = 1, 2
    d = m.d_head

    def kill(z):
        z = z.clone()
        z[:, :, head] = 0
        return z

    with torch.no_grad(), m.hooks({f"blocks.{layer}.attn.z": kill}):
        hooked = m.hf(**batch).logits
    # the same through attn.result (scale one head's contribution by zero)
    with torch.no_grad(), m.hooks({f"blocks.{layer}.attn.result": lambda r: r * (torch.arange(r.shape[2])
                                                                                    != head)[:, None]}):
        via_result = m.hf(**batch).logits
    o = m.module("attn_o", layer)
    with torch.no_grad():
        w = o.weight
        saved = w.clone()
        if isinstance(o, torch.nn.Linear):
            w[:, head * d:(head + 1) * d] = 0
        else:  # GPT-2 Conv1D: [in, out]
            w[head * d:(head + 1) * d, :] = 0
        surgery = m.hf(**batch).logits
        w.copy_(saved)
        plain = m.hf(**batch).logits
    assert not torch.allclose(hooked, plain, atol=1e-4)
    assert torch.allclose(hooked, surgery, atol=1e-5)
    assert torch.allclose(via_result, surgery, atol=1e-5)


def test_pattern_edits_reach_the_output_and_compose_with_steering_and_capture():
    m = _model("llama", "sdpa")
    batch = _batch(left=False)
    seen = {}

    def uniform(p, call):  # attend equally to every allowed key
        seen["call"] = call
        allowed = (p > 0).to(p.dtype)
        return allowed / allowed.sum(-1, keepdim=True)

    vec = torch.randn(m.d_model)
    with torch.no_grad():
        plain = m.hf(**batch).logits
        with m.hooks({"blocks.0-2.attn.pattern": lambda p, call: p.clone()}):
            same = m.hf(**batch).logits
        with m.edit(actlab.Add({"blocks.0.resid_post": vec}, 1.0)), m.hooks({"blocks.1.attn.pattern": uniform}), \
                m.capture("blocks.1.attn.pattern,blocks.1.attn.z") as acts:
            m.hf(**batch)
    assert torch.allclose(same, plain, atol=1e-5)
    pat = acts["blocks.1.attn.pattern"]
    causal = torch.ones(9, 9).tril()
    assert torch.allclose(pat[0, :, 0], causal / causal.sum(-1, keepdim=True), atol=1e-6)  # capture sees the edit
    assert seen["call"].name == "blocks.1.attn.pattern" and seen["call"].layer == 1
    assert seen["call"].state is not None and seen["call"].state.seq == 9
    assert count_hooks(m.hf) == 0 and not _ROUTES


def test_no_route_survives_an_exception_and_bad_hooks_fail_clearly():
    m = _model("llama", "sdpa")
    attn = m.module("attn_core", 1)
    config = attn.config
    batch = _batch(left=False)
    with pytest.raises(RuntimeError, match="boom"), m.hooks({"blocks.1.attn.q": lambda q: None}):
        assert attn.config is not config and attn.config._attn_implementation == "actlab"
        assert m.hf.config._attn_implementation == "sdpa"  # the rest of the model keeps its kernel
        raise RuntimeError("boom")
    assert attn.config is config and not _ROUTES and count_hooks(m.hf) == 0
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.pattern returned \(2, 3\)"), \
            m.hooks({"blocks.1.attn.pattern": lambda p: torch.zeros(2, 3)}), torch.no_grad():
        m.hf(**batch)
    assert attn.config is config and not _ROUTES and count_hooks(m.hf) == 0
    with pytest.raises(actlab.ActlabError, match=r"unknown hook-point kind 'attn\.patern'"):
        m.hooks({"blocks.1.attn.patern": lambda p: None})


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neo", "gptj"])
def test_generation_with_cached_keys_is_unchanged_by_reading_the_pattern(family):
    m = _model(family)
    ids = _batch(left=False)["input_ids"][:1]
    kw = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        plain = m.hf.generate(ids, **kw)
        shapes = []
        with m.hooks({"blocks.1.attn.pattern": lambda p: shapes.append(tuple(p.shape))}):
            hooked = m.hf.generate(ids, **kw)
    assert torch.equal(plain, hooked)
    # one call for the prompt, then one token at a time against a growing cache of keys
    assert shapes[0] == (1, 9, m.n_heads, 9) and shapes[1] == (1, 1, m.n_heads, 10)


def test_attention_internals_and_patching_on_smollm2(smollm):
    """The real model (grouped-query attention, 9 query / 3 KV heads, SDPA): the captured pattern equals
    softmax(q k^T / sqrt(d) + causal mask) from the captured q and k, reading changes no logit, and patching a
    whole layer of the clean run into the corrupted one restores the clean logit difference."""
    from actlab.patching import activation_patching, logit_diff

    m = smollm
    batch = m.tokenize("The capital of France is the city of")
    layer = 12
    with torch.no_grad():
        ref = m(**batch).logits
        with m.capture(f"blocks.{layer}.attn.q,blocks.{layer}.attn.k,blocks.{layer}.attn.pattern") as acts:
            out = m(**batch).logits
    assert torch.equal(out, ref)  # reading the pattern leaves the model's own SDPA kernel computing the output
    q, k, pat = (acts[f"blocks.{layer}.attn.{n}"][0].double() for n in ("q", "k", "pattern"))
    assert q.shape[1] == 9 and k.shape[1] == 3
    kk = k.repeat_interleave(3, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, kk) / q.shape[-1] ** 0.5
    t = q.shape[0]
    by_hand = torch.softmax(scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf")), -1)
    assert torch.allclose(pat, by_hand.permute(1, 0, 2), atol=1e-5)
    paris, rome = (m.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" Paris", " Rome"))
    res = activation_patching(m, "The capital of France is the city of", "The capital of Italy is the city of",
                              logit_diff(paris, rome), kinds="resid_pre", layers="20")
    with torch.no_grad(), m.capture("blocks.20.resid_pre", dtype=None) as clean:
        m(**m.tokenize("The capital of France is the city of"))
    with torch.no_grad(), m.hooks({"blocks.20.resid_pre": lambda x: clean["blocks.20.resid_pre"].to(x.dtype)}):
        logits = m(**m.tokenize("The capital of Italy is the city of")).logits[0, -1]
    assert float(logits[paris] - logits[rome]) == pytest.approx(res.clean_metric, abs=1e-3)
    assert res.clean_metric > 0 > res.corrupt_metric
