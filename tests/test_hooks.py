"""Hook-point invariants against HF's own outputs, for every adapter family (tiny random-init models)."""

from __future__ import annotations

import pytest
import torch

import actlab
from actlab.errors import HookPointError, InputError
from actlab.hooks import HookSession, count_hooks
from actlab.hooks.points import HookPoint
from tiny_models import FAMILIES, V, tiny_model

ATOL = 2e-4


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param)


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, V, (n,), generator=g)


def _padded(rows: list[torch.Tensor], side: str) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[b, sl], mask[b, sl] = r, 1
    return {"input_ids": ids, "attention_mask": mask}


def test_resid_post_matches_hf_hidden_states(model):
    ids = _ids(9)[None]
    with model.capture(["resid_post", "final_norm"]) as acts:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    hs = out.hidden_states
    L = model.n_layers
    assert len(hs) == L + 1
    for i in range(L - 1):
        torch.testing.assert_close(acts[f"blocks.{i}.resid_post"], hs[i + 1].float(), atol=ATOL, rtol=0)
    last = acts[f"blocks.{L - 1}.resid_post"]
    # HF's last hidden state is post-final-norm for these families; accept either convention explicitly
    normed = acts["final_norm"]
    assert torch.allclose(normed, hs[L], atol=ATOL) or torch.allclose(last, hs[L], atol=ATOL)
    torch.testing.assert_close(normed, model.final_norm_module(last), atol=ATOL, rtol=0)


def test_residual_decomposition(model):
    ids = _ids(8, 1)[None]
    with model.capture(["embed", "resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"]) as acts:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    torch.testing.assert_close(acts["embed"], acts["blocks.0.resid_pre"])
    for i in range(model.n_layers):
        pre, attn, mid = (acts[f"blocks.{i}.{k}"] for k in ("resid_pre", "attn_out", "resid_mid"))
        mlp, post = acts[f"blocks.{i}.mlp_out"], acts[f"blocks.{i}.resid_post"]
        if i + 1 < model.n_layers:
            torch.testing.assert_close(post, acts[f"blocks.{i + 1}.resid_pre"])
        torch.testing.assert_close(mid, pre + attn, atol=ATOL, rtol=0)
        if model.parallel:
            torch.testing.assert_close(post, pre + attn + mlp, atol=ATOL, rtol=0)
        else:
            torch.testing.assert_close(post, mid + mlp, atol=ATOL, rtol=0)
        assert not torch.allclose(attn, torch.zeros_like(attn)) and not torch.allclose(mlp, torch.zeros_like(mlp))


def test_mlp_hidden_feeds_the_down_projection(model):
    ids = _ids(6, 2)[None]
    with model.capture(["blocks.1.mlp_hidden"]) as acts:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    h = acts["blocks.1.mlp_hidden"]
    assert h.shape == (1, 6, model.d_mlp)
    down = model.layers[1].get_submodule(model.adapter.mlp_down)
    seen = {}

    def grab(module, args, output):
        seen["x"] = args[0].detach().clone()

    handle = down.register_forward_hook(grab)
    try:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        handle.remove()
    torch.testing.assert_close(h.reshape(-1, model.d_mlp), seen["x"].reshape(-1, model.d_mlp))


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_unbatched(model, side):
    rows = [_ids(7, 3), _ids(4, 4), _ids(5, 5)]
    points = ["blocks.0.resid_pre", "blocks.1.attn_out", "blocks.1.resid_mid", "blocks.2.mlp_hidden",
              f"blocks.{model.n_layers - 1}.resid_post"]
    batch = _padded(rows, side)
    policies = ["all", "last", [0, -1], "tokens", -2]
    got = {}
    for pol in policies:
        with model.capture(points, positions=pol) as acts:
            model(**batch)
        got[str(pol)] = acts
    for b, r in enumerate(rows):
        one = {"input_ids": r[None], "attention_mask": torch.ones(1, len(r), dtype=torch.long)}
        with model.capture(points, positions="all") as ref:
            model(**one)
        for p in points:
            full = ref[p][0]
            n = len(r)
            torch.testing.assert_close(got["all"][p][b, :n], full, atol=ATOL, rtol=0)
            assert torch.all(got["all"][p][b, n:] == 0)
            torch.testing.assert_close(got["last"][p][b], full[-1], atol=ATOL, rtol=0)
            torch.testing.assert_close(got[str([0, -1])][p][b], full[[0, -1]], atol=ATOL, rtol=0)
            torch.testing.assert_close(got["-2"][p][b], full[-2], atol=ATOL, rtol=0)
            start = sum(len(x) for x in rows[:b])
            torch.testing.assert_close(got["tokens"][p][start:start + n], full, atol=ATOL, rtol=0)
    assert got["all"].lengths.tolist() == [7, 4, 5]


def test_bool_mask_positions(model):
    rows = [_ids(6, 6), _ids(3, 7)]
    batch = _padded(rows, "left")
    sel = batch["attention_mask"].bool() & (torch.arange(6)[None] % 2 == 1)
    with model.capture("blocks.0.resid_post", positions=sel) as acts, model.capture(
            "blocks.0.resid_post", positions="all") as full:
        model(**batch)
    assert acts["blocks.0.resid_post"].shape == (int(sel.sum()), model.d_model)
    # first selected element is row 0, padded index 1 -> real index 1
    torch.testing.assert_close(acts["blocks.0.resid_post"][0], full["blocks.0.resid_post"][0, 1])
    with pytest.raises(InputError, match="padding"), model.capture("blocks.0.resid_post",
                                                                     positions=torch.ones(2, 6, dtype=torch.bool)):
        model(**batch)


def test_early_stop_is_identical_and_skips_later_layers(model):
    ids = _ids(8, 8)[None]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with model.capture(["blocks.0.resid_post", "blocks.1.mlp_hidden"], positions="all") as full:
        model(**batch)
    calls = []
    handle = model.layers[-1].register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        early = model.activations(batch, ["blocks.0.resid_post", "blocks.1.mlp_hidden"])
        with model.capture(["blocks.0.resid_post", "blocks.1.mlp_hidden"], stop=True) as ctx_acts:
            model(**batch)
            raise AssertionError("the forward should have stopped")  # pragma: no cover
    finally:
        handle.remove()
    assert calls == []
    for p in full:
        assert torch.equal(early[p], full[p])
        assert torch.equal(ctx_acts[p], full[p])


def test_no_hook_survives(model):
    before = count_hooks(model.hf)
    ids = _ids(5, 9)[None]
    with model.capture(["resid_pre", "resid_mid", "resid_post", "mlp_hidden", "embed", "final_norm"]):
        assert count_hooks(model.hf) > before
        model(input_ids=ids)
    assert count_hooks(model.hf) == before
    with pytest.raises(RuntimeError, match="boom"), model.capture(["resid_post"]):
        model(input_ids=ids)
        raise RuntimeError("boom")
    assert count_hooks(model.hf) == before
    # an exception raised inside a hook (bad positions) also leaves nothing behind
    with pytest.raises(InputError), model.capture(["resid_post"], positions=[10]):
        model(input_ids=ids)
    assert count_hooks(model.hf) == before
    model.activations(ids, "blocks.0.resid_post")
    assert count_hooks(model.hf) == before


def test_lens_at_last_layer_equals_logits(model):
    ids = _ids(6, 10)[None]
    with model.capture(f"blocks.{model.n_layers - 1}.resid_post") as acts:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    lens = model.unembed(acts[f"blocks.{model.n_layers - 1}.resid_post"])
    torch.testing.assert_close(lens, out.logits.float(), atol=1e-4, rtol=1e-4)


def test_kv_cache_positions(model):
    """With a KV cache, each call's positions are its own tokens; the state knows the cache length."""
    ids = _ids(6, 11)[None]
    with model.capture("blocks.0.resid_post", positions="last") as acts:
        out = model(input_ids=ids[:, :4], attention_mask=torch.ones(1, 4, dtype=torch.long), use_cache=True)
        model(input_ids=ids[:, 4:], attention_mask=torch.ones(1, 6, dtype=torch.long),
              past_key_values=out.past_key_values, position_ids=torch.arange(4, 6)[None], use_cache=True)
    with model.capture("blocks.0.resid_post", positions=[3, 5]) as ref:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    torch.testing.assert_close(acts["blocks.0.resid_post"], ref["blocks.0.resid_post"][0], atol=ATOL, rtol=0)


def test_tuple_and_tensor_outputs():
    """A site whose module returns a tuple and one returning a tensor are both read and written."""

    class Block(torch.nn.Module):
        def __init__(self, as_tuple):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.as_tuple = as_tuple

        def forward(self, x):
            y = self.lin(x)
            return (y, "extra") if self.as_tuple else y

    for as_tuple in (True, False):
        blk = Block(as_tuple)
        x = torch.randn(2, 3, 4)
        seen = []
        with HookSession(blk) as s:
            s.add(blk, "out", lambda t, st: t + 1, write=True)
            s.add(blk, "out", lambda t, st, seen=seen: seen.append(t.clone()), write=False)
            out = blk(x)
        y = out[0] if as_tuple else out
        torch.testing.assert_close(y, blk.lin(x) + 1)
        torch.testing.assert_close(seen[0], y)
        assert count_hooks(blk) == 0
        if as_tuple:
            assert out[1] == "extra"


def test_points_sharing_a_site_see_only_edits_up_to_them(model):
    """embed and blocks.0.resid_pre share the first block's input; resid_mid is written through attn_out's
    output. A capture of the earlier point must not see an edit made at the later one."""
    from actlab import Add

    ids = _ids(7)[None]
    names = ["embed", "blocks.0.resid_pre", "blocks.1.attn_out", "blocks.1.resid_mid", "blocks.1.resid_post"]
    with model.capture(names) as clean:
        model(input_ids=ids)
    g = torch.Generator().manual_seed(3)
    v0, v1 = torch.randn(model.d_model, generator=g), torch.randn(model.d_model, generator=g)
    adds = {HookPoint(0, "resid_pre"): v0, HookPoint(1, "resid_mid"): v1}
    with model.edit(Add(adds, 1.0)), model.capture(names) as steered:
        model(input_ids=ids)
    torch.testing.assert_close(steered["embed"], clean["embed"])
    torch.testing.assert_close(steered["blocks.0.resid_pre"], clean["embed"] + v0)
    with model.capture(names) as base, model.edit(Add({HookPoint(0, "resid_pre"): v0})):  # layer 1: only v0
        model(input_ids=ids)
    torch.testing.assert_close(steered["blocks.1.attn_out"], base["blocks.1.attn_out"])
    torch.testing.assert_close(steered["blocks.1.resid_mid"], base["blocks.1.resid_mid"] + v1, atol=ATOL, rtol=0)


def test_edit_of_resid_mid_acts_on_the_stream(model):
    """Replace at resid_mid sets it to fn(resid_mid) (through attn_out); identity leaves logits alone."""
    from actlab import Replace

    ids = _ids(8, seed=2)[None]
    before = count_hooks(model.hf)
    names = ["blocks.1.attn_out", "blocks.1.resid_mid", "blocks.1.mlp_out", "blocks.1.resid_post"]
    with model.capture(names) as clean:
        logits = model(input_ids=ids).logits
    with model.edit(Replace(HookPoint(1, "resid_mid"), lambda x: x)):
        torch.testing.assert_close(model(input_ids=ids).logits, logits, atol=ATOL, rtol=0)
    with model.edit(Replace(HookPoint(1, "resid_mid"), lambda x: 0.5 * x)), model.capture(names) as edited:
        model(input_ids=ids)
    assert count_hooks(model.hf) == before
    torch.testing.assert_close(edited["blocks.1.attn_out"], clean["blocks.1.attn_out"])
    torch.testing.assert_close(edited["blocks.1.resid_mid"], 0.5 * clean["blocks.1.resid_mid"], atol=ATOL, rtol=0)
    torch.testing.assert_close(edited["blocks.1.resid_post"],
                               edited["blocks.1.resid_mid"] + edited["blocks.1.mlp_out"], atol=ATOL, rtol=0)


def test_bad_points(model):
    with pytest.raises(HookPointError, match="resid_post"):
        model.parse_points("blocks.0.resid_psot")
    with pytest.raises(HookPointError, match=r"out of range.*0\.\.2"):
        model.parse_points("blocks.7.resid_post")
    with pytest.raises(HookPointError, match="Valid"):
        model.parse_points("residpost")
    with pytest.raises(HookPointError, match="inclusively"):  # the first wave's slice form is gone
        model.parse_points("blocks.1:.resid_pre")
    assert [p.layer for p in model.parse_points("blocks.1-2.resid_pre")] == [1, 2]
    assert [p.layer for p in model.parse_points("blocks.-1.resid_pre")] == [2]
    with pytest.raises(InputError, match="policy"):
        model.capture("resid_post", positions="first")


def test_wrong_adapter_fails_validation():
    """Gemma-2 read with Llama's module map (post-attention norm taken as pre-MLP norm) is caught at load."""
    import dataclasses

    from actlab.models.adapters import ADAPTERS
    from tiny_models import tiny_hf_model

    hf = tiny_hf_model("gemma2")
    llama_map = dataclasses.replace(ADAPTERS["gemma2"], attn="self_attn", mlp_out="mlp",
                                    mlp_norm="post_attention_layernorm")
    with pytest.raises(actlab.errors.AdapterValidationError,
                       match=r"resid_(mid|post) == resid_(pre|mid) \+ (attn|mlp)_out"):
        actlab.wrap(hf, None, adapter=llama_map)
    with pytest.raises(actlab.errors.AdapterValidationError, match="lens"):  # softcap forgotten
        actlab.wrap(tiny_hf_model("gemma2"), None, adapter=dataclasses.replace(ADAPTERS["gemma2"], softcap_attr=None))


def test_unknown_architecture_error():
    import transformers as tf

    cfg = tf.BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, is_decoder=True)
    hf = tf.BertLMHeadModel(cfg)
    # no hand-written adapter: derivation is tried and says which part does not fit (a post-LayerNorm block)
    with pytest.raises(actlab.errors.UnsupportedArchitectureError,
                       match=r"(?s)bert.*does not decompose.*register_adapter"):
        actlab.wrap(hf, None)


def test_a_point_that_holds_nothing_says_why():
    """A requested point with no entry raises a KeyError that names it and why (no forward ran; the forward ran
    but never reached its module), instead of a bare KeyError - or a silent absence in a loop over keys."""
    m = tiny_model("llama")
    ids = torch.tensor([[1, 2, 3]])
    with m.capture(["blocks.0.resid_post"]) as acts:
        pass
    with pytest.raises(KeyError, match=r"blocks\.0\.resid_post was captured but holds nothing: no forward ran"):
        acts["blocks.0.resid_post"]
    mlp = m.layers[1].mlp
    real = mlp.forward
    mlp.forward = lambda x: torch.zeros_like(x)  # a layer whose MLP module is bypassed: its hooks never fire
    try:
        with torch.no_grad(), m.capture(["blocks.0.mlp_out", "blocks.1.mlp_hidden"]) as acts:
            m(input_ids=ids)
    finally:
        mlp.forward = real
    assert acts["blocks.0.mlp_out"].shape[-1] == m.d_model and "blocks.1.mlp_hidden" not in acts
    with pytest.raises(KeyError, match=r"1 forward call\(s\) reached other points but not this one"):
        acts[HookPoint(1, "mlp_hidden")]
    with pytest.raises(KeyError, match=r"^'nope'$"):  # a point never requested: the plain KeyError
        acts["nope"]
