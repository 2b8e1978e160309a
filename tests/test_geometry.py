"""Rotation steering, addition-vs-rotation maps, curvature along a direction and loss-Hessian eigenpairs, each
checked against an independent computation (brute force, finite differences, a dense Hessian)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from actlab.analysis.curvature import LossHessian, direction_derivatives, eigen_report, lm_loss_metric, top_eigen
from actlab.analysis.prompting import fit_maps, map_errors
from actlab.errors import InputError
from actlab.hooks.directions import Rotate, rotate_towards, set_angle
from actlab.hooks.points import HookPoint
from tiny_models import V, tiny_model


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.arccos(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1).clamp(-1, 1))


def test_rotation_keeps_norms_and_turns_by_the_angle_in_the_plane():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 12, generator=g, dtype=torch.float64)
    d = torch.randn(12, generator=g, dtype=torch.float64)
    d = d / d.norm()
    theta = math.radians(25)
    r = rotate_towards(x, d, theta)
    torch.testing.assert_close(r.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(_angle(r, x), torch.full((50,), theta, dtype=torch.float64))
    # towards d: the angle to d shrinks by theta (none of these x is within 25 degrees of d)
    assert bool((_angle(x, d[None]) > theta).all())
    torch.testing.assert_close(_angle(r, d[None]), _angle(x, d[None]) - theta)
    # the result stays in span(x, d)
    basis = torch.stack([x, d.expand_as(x)], -1)  # [n, 12, 2]
    coef = torch.linalg.lstsq(basis, r[..., None]).solution
    torch.testing.assert_close((basis @ coef)[..., 0], r)
    s = set_angle(x, d, math.radians(60))
    torch.testing.assert_close(_angle(s, d[None]), torch.full((50,), math.radians(60), dtype=torch.float64))
    torch.testing.assert_close(s.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotate_towards(3 * d[None], d, 0.4), 3 * d[None])  # parallel: no plane, unchanged


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_rotate_intervention_preserves_the_stream_norm(family):
    m = tiny_model(family)
    d = torch.randn(m.d_model, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(3, V, (2, 6), generator=torch.Generator().manual_seed(2))
    p = "blocks.1.resid_post"
    with torch.no_grad():
        with m.capture(p) as clean:
            m(input_ids=ids)
        with m.edit(Rotate(d, 30, layers=[1])) as ed, m.capture(p) as rot:
            m(input_ids=ids)
        with m.edit(Rotate(d, 10, mode="to", layers="1")), m.capture(p) as to:
            m(input_ids=ids)
    torch.testing.assert_close(rot[p].norm(dim=-1), clean[p].norm(dim=-1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_angle(rot[p], clean[p]).float(), torch.full(clean[p].shape[:2], math.radians(30)),
                               atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(_angle(to[p], d[None, None]).float(), torch.full(clean[p].shape[:2], math.radians(10)),
                               atol=1e-3, rtol=1e-3)
    assert ed.records()[0]["kind"] == "rotate" and ed.records()[0]["angle_degrees"] == 30
    with pytest.raises(InputError, match="residual"):
        m.edit(Rotate(d, 5, kind="mlp_hidden"))
    with pytest.raises(InputError, match=r"0\.\.180"):
        Rotate(d, 200, mode="to")


def test_fitted_rotation_angle_is_the_brute_force_optimum():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 10, generator=g, dtype=torch.float64) + 2
    true_d = torch.randn(10, generator=g, dtype=torch.float64)
    y = rotate_towards(x, true_d / true_d.norm(), 0.5) + 0.05 * torch.randn(40, 10, generator=g,
                                                                            dtype=torch.float64)
    fit = fit_maps(x, y)
    grid = torch.linspace(-math.pi, math.pi, 20001, dtype=torch.float64)
    errs = torch.stack([(y - rotate_towards(x, fit.direction, float(t))).pow(2).sum(-1).mean() for t in grid[::20]])
    best = float(grid[::20][errs.argmin()])
    assert abs(best - fit.theta) < 2 * float(grid[20] - grid[0])
    err_fit = float((y - fit.rotate(x)).pow(2).sum(-1).mean())
    assert err_fit <= float(errs.min()) + 1e-9
    # pure translations: addition reproduces them exactly, rotation cannot change norms
    shift = torch.randn(10, generator=g, dtype=torch.float64)
    e = map_errors(fit_maps(x, x + shift), x, x + shift)
    assert e["residual_error_add"] < 1e-20 < e["residual_error_rotate"] < 1
    with pytest.raises(InputError, match="does not change"):
        fit_maps(x, x)


def test_curvature_along_a_direction_matches_finite_differences():
    m = tiny_model("gpt2")  # fully float64 once converted (rotary models keep float32 internals: noisy differences)
    m.hf.double()
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, V, (3, 7), generator=g)
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    v = torch.randn(m.d_model, generator=g, dtype=torch.float64) * 0.3
    p = HookPoint(1, "resid_mid")  # a composite kind: the edit goes through the attention output
    metric = lm_loss_metric(m, batches)
    rows = direction_derivatives(m, p, v, metric, [-1.0, 0.5])
    h = 1e-3
    from actlab import Add

    def f(mult: float) -> float:
        with torch.no_grad(), m.edit(Add({p: v}, mult)):
            return float(metric())

    for r in rows:
        mu = r["multiplier"]
        assert r["value"] == pytest.approx(f(mu), rel=1e-9)
        assert r["first_derivative"] == pytest.approx((f(mu + h) - f(mu - h)) / (2 * h), rel=1e-6)
        assert r["second_derivative"] == pytest.approx((f(mu + h) - 2 * f(mu) + f(mu - h)) / h**2, rel=1e-5)
    assert any(abs(r["second_derivative"]) > 1e-3 for r in rows)  # the model is not flat along v


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_hessian_eigenpairs_match_a_dense_hessian(method):
    m = tiny_model("gpt2")
    m.hf.double()
    g = torch.Generator().manual_seed(5)
    batches = []
    for n in (5, 7):  # two batches of different lengths: products are token-weighted
        ids = torch.randint(3, V, (2, n), generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    hess = LossHessian(m, HookPoint(1, "resid_pre"), batches)
    dense = torch.autograd.functional.hessian(hess.loss, torch.zeros(m.d_model, dtype=torch.float64))
    torch.testing.assert_close(dense, dense.T, atol=1e-8, rtol=1e-6)
    evals, evecs = torch.linalg.eigh(dense)
    order = evals.abs().argsort(descending=True)
    k = 3 if method == "lanczos" else 2
    vals, vecs = top_eigen(hess, k, method=method, iters=400, tol=1e-10)
    torch.testing.assert_close(vals, evals[order[:k]], rtol=1e-4, atol=1e-6)
    for i in range(k):
        assert float((vecs[i] @ evecs[:, order[i]]).abs()) > 0.999
    rep = eigen_report(vals, vecs, evecs[:, order[0]] * 3)
    assert rep["abs_cos_to_vector"][0] > 0.999 and rep["random_direction_abs_cos"] < 0.2
    assert hess.n_products > 0


@pytest.mark.shared
def test_geometry_commands_write_json_and_figures(smollm, tmp_path, capsys):
    """End to end through the CLI on SmolLM2: prompting (add vs rotate), curvature and Hessian."""
    from actlab.steering import SteeringVector
    from test_cli import run

    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["Describe the sea.", "What is a cat?", "Tell me about rain.",
                                   "Name a colour.", "Why is the sky blue?", "What do bees make?"]))
    model = "HuggingFaceTB/SmolLM2-135M-Instruct"
    code, _, err = run(["compare", "prompting", model, "--instruction", "Answer like a pirate.", "--prompts",
                        str(prompts), "--layers", "4,14,24", "--out", str(tmp_path / "pr")], capsys)
    assert code == 0, err
    pr = json.loads((tmp_path / "pr" / "prompting.json").read_text())
    assert [r["layer"] for r in pr["per_layer"]] == [4, 14, 24] and pr["n_test"] == 3
    assert pr["kind"] == "prompting" and pr["point_kind"] == "resid_post"  # was the hook kind: no curated section
    for r in pr["per_layer"]:
        assert r["kl_none"] > 0 and r["residual_error_add"] >= 0 and r["residual_error_rotate"] >= 0
    assert (tmp_path / "pr" / "prompting.png").is_file()
    vec = SteeringVector({10: torch.randn(smollm.d_model, generator=torch.Generator().manual_seed(0))},
                         "resid_post", {"model": smollm.name, "n_layers": smollm.n_layers})
    vec.save(tmp_path / "v.safetensors")
    code, _, err = run(["compare", "curvature", model, "--vector", str(tmp_path / "v.safetensors"), "--data",
                        str(prompts), "--multipliers", "-1,0,1", "--out", str(tmp_path / "cu")], capsys)
    assert code == 0, err
    cu = json.loads((tmp_path / "cu" / "curvature.json").read_text())
    assert len(cu["rows"]) == 3 and cu["metric"] == "next-token loss"
    code, _, err = run(["compare", "hessian", model, "--layer", "10", "--data", str(prompts), "--top-k", "2",
                        "--vector", str(tmp_path / "v.safetensors"), "--out", str(tmp_path / "he")], capsys)
    assert code == 0, err
    he = json.loads((tmp_path / "he" / "hessian.json").read_text())
    assert len(he["eigenvalues"]) == 2 and len(he["abs_cos_to_vector"]) == 2
    assert (tmp_path / "he" / "hessian.png").is_file()


def test_parameter_hessian_eigenpairs_match_a_dense_hessian():
    """Issue 25: the Hessian the CAA discussion means is over the parameters. On a tiny model (float64), the
    leading eigenpairs from Hessian-vector products over a name glob equal a dense Hessian's; the per-batch
    Hessians average to the concatenated one (token-weighted)."""
    from actlab.analysis.curvature import ParamHessian

    m = tiny_model("llama")
    m.hf.double()
    g = torch.Generator().manual_seed(3)
    batches = []
    for n in (5, 8):
        ids = torch.randint(3, V, (2, n), generator=g)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    hess = ParamHessian(m, batches, params="model.layers.0.*layernorm.weight")  # a glob: both norms' gains
    assert hess.names == ["model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"]
    assert hess.d == 2 * m.d_model
    flat = torch.cat([p.detach().reshape(-1) for p in hess.params]).double()
    assert float(hess.loss(flat).detach()) == pytest.approx(float(hess.loss().detach()), rel=1e-12)
    dense = torch.autograd.functional.hessian(hess.loss, flat)
    # (transformers' RMSNorm computes in float32 even in a float64 model: agreement to float32 round-off)
    torch.testing.assert_close(dense, dense.T, atol=1e-6, rtol=1e-5)
    v = torch.randn(hess.d, generator=g, dtype=torch.float64)
    torch.testing.assert_close(hess.hvp(v), dense @ v, rtol=1e-5, atol=1e-6)
    evals, evecs = torch.linalg.eigh(dense)
    order = evals.abs().argsort(descending=True)
    for method, k in (("lanczos", 2), ("power", 1)):
        vals, vecs = top_eigen(hess, k, method=method, iters=200, tol=1e-9)
        torch.testing.assert_close(vals, evals[order[:k]], rtol=1e-4, atol=1e-6)
        for i in range(k):
            assert float((vecs[i] @ evecs[:, order[i]]).abs()) > 0.999
    w = [hess.restricted(i).weights[0] for i in range(2)]
    per = [hess.restricted(i).hvp(v) for i in range(2)]
    torch.testing.assert_close((w[0] * per[0] + w[1] * per[1]) / sum(w), hess.hvp(v), rtol=1e-9, atol=1e-10)
    with pytest.raises(InputError, match="no parameter name matches"):
        ParamHessian(m, batches, params="nothing.*")
    flags = [p.requires_grad for p in m.hf.parameters()]
    m.hf.requires_grad_(False)
    hess.hvp(v)
    assert not any(p.requires_grad for p in m.hf.parameters())  # switched on for the products only
    m.hf.requires_grad_(True)
    assert flags


def test_parameter_hessian_command_with_per_batch_estimate(tmp_path, capsys):
    """`compare hessian --wrt params --params GLOB --per-batch` on stories260k: the eigenvalues of all batches at
    once, each batch's own and their mean, figures; a vector or a missing layer is refused."""
    from conftest import shared_path
    from test_cli import run

    shared_path("models", "stories260k")
    texts = tmp_path / "t.json"
    texts.write_text(json.dumps(["Once upon a time there was a girl.", "The dog ran to the park and played.",
                                 "Tom was sad because his toy broke.", "The sun was bright and warm today."]))
    args = ["compare", "hessian", "stories260k", "--data", str(texts), "--out", str(tmp_path / "h"), "--wrt",
            "params", "--params", "model.layers.4.*norm.weight", "--top-k", "2", "--batch-size", "2"]
    code, out, err = run([*args, "--per-batch"], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "h" / "hessian.json").read_text())
    assert rep["wrt"] == "params" and rep["params"]["names"] == ["model.layers.4.input_layernorm.weight",
                                                                 "model.layers.4.post_attention_layernorm.weight"]
    assert len(rep["eigenvalues"]) == 2 and len(rep["per_batch"]["eigenvalues"]) == 2
    each = rep["per_batch"]["eigenvalues"]
    assert rep["per_batch"]["mean"] == pytest.approx([(a + b) / 2 for a, b in zip(*each, strict=True)])
    assert (tmp_path / "h" / "hessian.png").is_file() and "mean of the per-batch" in out
    code, _, err = run(["compare", "hessian", "stories260k", "--data", str(texts), "--out", str(tmp_path / "h2")],
                       capsys)
    assert code == 2 and "--layer" in err  # the default is w.r.t. activations, which needs a layer
    vec = tmp_path / "v.safetensors"
    from actlab.steering import SteeringVector

    SteeringVector({1: torch.ones(64)}).save(vec)
    code, _, err = run([*args, "--vector", str(vec)], capsys)
    assert code == 2 and "--vector" in err
