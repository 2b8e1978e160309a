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


def test_lens_of_a_steered_or_ablated_run_from_the_cli(stories260k, tmp_path, capsys):
    """Issue 25: the logit lens of an edited run from the CLI. `lens --vector` reads the run `steer generate`
    steers (equal to the lens taken by hand under the same Steer, and at the last layer to the steered model's
    own next-token distribution); multiplier 0 is the plain lens; `--ablate` equals a hand ProjectOut."""
    from actlab import ProjectOut, Steer
    from actlab.steering import SteeringVector
    from test_cli import run

    m = stories260k
    torch.manual_seed(0)
    vec = SteeringVector({i: torch.randn(m.d_model) for i in range(m.n_layers)}, meta={"method": "random"})
    vpath = tmp_path / "v.safetensors"
    vec.save(vpath)
    prompt, target = "Once upon a time there was", " a"
    base = ["lens", "stories260k", "-p", prompt, "--target", target, "--points", "resid_post"]

    def lens_json(*extra: str) -> dict:
        """The JSON the command writes, with the target's probability per layer as ``target_probs`` [1, layer]."""
        out = tmp_path / f"l{len(list(tmp_path.iterdir()))}.json"
        code, _, err = run([*base, *extra, "--json", str(out)], capsys)
        assert code == 0, err
        d = json.loads(out.read_text())
        d["target_probs"] = [[e["target_prob"] for e in d["prompts"][0]["points"]["resid_post"]]]
        return d

    plain = lens_json()
    zero = lens_json("--vector", str(vpath), "-m", "0")
    assert zero["target_probs"] == plain["target_probs"]
    steered = lens_json("--vector", str(vpath), "--layers", "1", "-m", "6")
    last = m.n_layers - 1
    with m.edit(Steer(vec, 6.0, layers=[1])):
        by_hand = actlab.logit_lens(m, prompt, points="resid_post", target=target)
        logits = m(**m.tokenize(prompt)).logits[0, -1]
    got = torch.tensor(steered["target_probs"])
    assert torch.allclose(got, by_hand.target_probs, atol=1e-6)
    tid = m.tokenizer(target, add_special_tokens=False)["input_ids"][0]
    assert float(got[0, last]) == pytest.approx(float(logits.softmax(-1)[tid]), abs=1e-5)
    assert not torch.allclose(got, torch.tensor(plain["target_probs"]), atol=1e-4)
    rec = steered["interventions"][0]
    assert rec["kind"] == "steer" and rec["layers"] == [1] and rec["vector"]["source"]["file"] == str(vpath)
    ablated = lens_json("--ablate", str(vpath))
    with m.edit(ProjectOut(vec[vec.layers[0]])):
        by_hand = actlab.logit_lens(m, prompt, points="resid_post", target=target)
    assert torch.allclose(torch.tensor(ablated["target_probs"]), by_hand.target_probs, atol=1e-6)
    assert ablated["interventions"][0]["kind"] == "project_out"
    code, _, err = run([*base, "--layers", "1"], capsys)
    assert code == 2 and "--vector" in err
    code, _, err = run([*base, "--vector", str(vpath), "--positions", "generated"], capsys)
    assert code == 2 and "generated steers nothing" in err


def test_lens_of_a_mixed_run_from_the_cli(stories260k, tmp_path, capsys):
    """Issue 25: `lens --mix-source` reads the run `steer mix` makes: the source prompt's last-token activation at
    the point, scaled, added at every prompt token - checked against a raw transformers forward hook that adds the
    source's hidden state by hand."""
    from test_cli import run

    m = stories260k
    prompt, source, target = "Once upon a time there was", "The little dog ran to the park", " a"
    out = tmp_path / "mixed.json"
    code, _, err = run(["lens", "stories260k", "-p", prompt, "--target", target, "--points", "resid_post",
                        "--mix-source", source, "--mix-point", "blocks.2.resid_post", "--mix-scale", "3",
                        "--json", str(out)], capsys)
    assert code == 0, err
    d = json.loads(out.read_text())
    got = torch.tensor([e["target_prob"] for e in d["prompts"][0]["points"]["resid_post"]])
    assert d["interventions"][0]["kind"] == "mix"
    with torch.no_grad():
        src = m.hf(**m.tokenize(source), output_hidden_states=True).hidden_states[3][0, -1]

        def add(_mod, _inp, output):
            if isinstance(output, tuple):
                return (output[0] + 3 * src, *output[1:])
            return output + 3 * src

        h = m.hf.model.layers[2].register_forward_hook(add)
        try:
            hs = m.hf(**m.tokenize(prompt), output_hidden_states=True).hidden_states
        finally:
            h.remove()
    tid = m.tokenizer(target, add_special_tokens=False)["input_ids"][0]
    for layer in range(m.n_layers - 1):  # the last hidden state is after the final norm
        # transformers records a layer's output before user forward hooks run: add the mix at its own layer
        h_last = hs[layer + 1][0, -1] + (3 * src if layer == 2 else 0)
        ref = m.unembed(h_last[None])[0].float().softmax(-1)[tid]
        assert float(got[layer]) == pytest.approx(float(ref), abs=1e-5), layer
    assert float(got[1]) != pytest.approx(float(got[2]), abs=1e-3)
    code, _, err = run(["lens", "stories260k", "-p", prompt, "--mix-point", "blocks.2.resid_post"], capsys)
    assert code == 2 and "--mix-source" in err
