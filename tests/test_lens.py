"""Logit lens: agreement with the model's logits, per-layer normalisation, targets, batching, JSON."""

from __future__ import annotations

import json

import pytest
import torch

import actlab
from actlab.errors import InputError
from tiny_models import tiny_model


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "gpt_neox", "opt"])
def test_lens_last_layer_and_final_norm_match_logits(family):
    m = tiny_model(family)
    ids = torch.randint(3, 90, (2, 7), generator=torch.Generator().manual_seed(0))
    res = actlab.logit_lens(m, ids, points=[f"blocks.{m.n_layers - 1}.resid_post", "final_norm"], top_k=4,
                            target=5)
    logits = m(input_ids=ids).logits[:, -1].float()
    probs = torch.softmax(logits, -1)
    want_p, want_i = probs.topk(4, -1)
    for j in range(2):
        assert torch.equal(res.top_ids[:, j], want_i)
        torch.testing.assert_close(res.top_probs[:, j], want_p, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(res.target_probs[:, j], probs[:, 5], atol=1e-6, rtol=1e-4)
        assert torch.equal(res.target_ranks[:, j], (probs > probs[:, 5:6]).sum(-1) + 1)


def test_each_layer_is_normalised_by_its_own_scale():
    m = tiny_model("llama")
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(1))
    res = actlab.logit_lens(m, ids, points="resid_post", top_k=3)
    with m.capture("resid_post", positions=-1) as acts:
        m(input_ids=ids)
    norm = m.final_norm_module
    for i in range(m.n_layers):
        x = acts[f"blocks.{i}.resid_post"]
        rms = x.pow(2).mean(-1, keepdim=True).add(norm.variance_epsilon).rsqrt()
        logits = m.lm_head(x * rms * norm.weight)
        assert torch.equal(res.top_ids[0, i], torch.softmax(logits, -1).topk(3, -1).indices[0])


def test_batched_lens_equals_single_prompts(stories260k):
    prompts = ["Once upon a time there was a", "The cat sat"]
    both = actlab.logit_lens(stories260k, prompts, points=["resid_post", "mlp_out"], top_k=3, target=" a")
    for b, p in enumerate(prompts):
        one = actlab.logit_lens(stories260k, p, points=["resid_post", "mlp_out"], top_k=3, target=" a")
        assert torch.equal(both.top_ids[b], one.top_ids[0])
        torch.testing.assert_close(both.target_probs[b], one.target_probs[0], atol=1e-6, rtol=1e-5)
    last_id = stories260k.tokenizer("The cat sat")["input_ids"][-1]
    assert both.position_tokens[1] == stories260k.tokenizer.decode([last_id])


def test_lens_on_real_model_finds_paris_late(smollm):
    res = actlab.logit_lens(smollm, "The capital of France is", points=["resid_post", "attn_out", "mlp_out"],
                            target=" Paris")
    last = res.index(f"blocks.{smollm.n_layers - 1}.resid_post")
    assert res.top_tokens[0][last][0] == " Paris" == res.final_top_tokens[0]
    assert int(res.target_ranks[0, last]) == 1
    assert float(res.target_probs[0, res.index("blocks.2.resid_post")]) < 0.01  # early layers do not know yet
    d = json.loads(json.dumps(res.to_dict()))
    entry = d["prompts"][0]["points"]["resid_post"][-1]
    assert entry["layer"] == smollm.n_layers - 1 and entry["top"][0] == {"token": " Paris", "id": 7042,
                                                                        "prob": entry["top"][0]["prob"]}
    assert set(d["prompts"][0]["points"]) == {"resid_post", "attn_out", "mlp_out"}
    assert len(d["prompts"][0]["points"]["attn_out"]) == smollm.n_layers


def test_lens_bad_input(stories260k):
    with pytest.raises(InputError, match="3 tokens"):
        actlab.logit_lens(stories260k, "Once upon a time", target=" girl")
    with pytest.raises(InputError, match="not d_model wide"):
        actlab.logit_lens(stories260k, "Once upon a time", points="mlp_hidden")
    with pytest.raises(InputError, match="out of range"):
        actlab.logit_lens(stories260k, "Once upon", position=40)
    with pytest.raises(InputError, match="top_k"):
        actlab.logit_lens(stories260k, "Once upon", top_k=0)
    with pytest.raises(InputError, match="empty"):
        actlab.logit_lens(stories260k, "")
