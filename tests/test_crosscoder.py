"""Crosscoders: a planted model difference is found as a tuned-only latent along the planted direction; the same
model twice gives (almost) no model-specific latents; latent scaling's closed form = least squares; training
resumes bit-exact after kill -9 and two processes train what one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from actlab.crosscoder import CrosscoderConfig, PairedReader, analyse, latent_scaling, load_crosscoder, scaling_beta
from actlab.crosscoder.model import Crosscoder
from actlab.sae import TrainConfig
from actlab.sae.train import Trainer
from conftest import shared_path
from two_process import train_in_two_processes

POINT = "blocks.1.resid_post"


# -- latent scaling ----------------------------------------------------------------------------------------------
def test_latent_scaling_closed_form_equals_least_squares_and_recovers_a_planted_beta():
    g = torch.Generator().manual_seed(0)
    t, d, n_lat = 500, 12, 3
    f = torch.relu(torch.randn(t, n_lat, generator=g, dtype=torch.float64))
    dirs = torch.randn(n_lat, d, generator=g, dtype=torch.float64)
    betas = torch.tensor([0.3, 1.7, -0.5], dtype=torch.float64)
    noise = torch.randn(n_lat, t, d, generator=g, dtype=torch.float64) * 0.1
    y = betas[:, None, None] * f.T[:, :, None] * dirs[:, None, :] + noise  # one target per latent
    got = scaling_beta(f, dirs, y)
    for j in range(n_lat):
        a = (f[:, j:j + 1] * dirs[j]).reshape(-1, 1)
        ref = torch.linalg.lstsq(a, y[j].reshape(-1, 1)).solution[0, 0]
        assert abs(float(got[j]) - float(ref)) < 1e-5
        assert abs(float(got[j]) - float(betas[j])) < 0.02
    assert torch.isnan(scaling_beta(torch.zeros(4, 1), dirs[:1], y[0, :4]))[0]


def test_latent_scaling_of_a_crosscoder_sees_what_the_base_model_carries():
    """A hand-built crosscoder: latent 0 decodes only into the tuned model. When the base activations do not hold
    its direction, nu_eps is ~0; when they do (the same feature, shrunk away by the crosscoder), nu_eps ~ 1."""
    d = 8
    cfg = CrosscoderConfig(d_ins=(d, d), d_sae=2, architecture="l1", l1_coefficient=1.0)
    cc = Crosscoder(cfg)
    u = torch.zeros(d)
    u[0] = 1.0
    v = torch.zeros(d)
    v[1] = 1.0
    with torch.no_grad():
        for i in range(2):
            cc.W_enc[i].zero_()
            cc.b_dec[i].zero_()
        cc.b_enc.zero_()
        cc.W_enc[1][:, 0] = u  # latent 0 reads u in the tuned model
        cc.W_dec[0][0] = 0.0
        cc.W_dec[1][0] = u
        cc.W_enc[0][:, 1] = v
        cc.W_dec[0][1] = v
        cc.W_dec[1][1] = v
    g = torch.Generator().manual_seed(1)
    a = torch.rand(200, generator=g) * 2
    tuned = a[:, None] * u
    for base_has_it, expect in ((False, 0.0), (True, 1.0)):
        base = a[:, None] * u if base_has_it else torch.zeros(200, d)
        sc = latent_scaling(cc, [torch.cat([base, tuned], 1)], [0], owner=1)
        assert abs(float(sc["nu_eps"][0]) - expect) < 1e-6, sc
    # the mirror: the same latent made base-only (decoder and encoder moved to the base side), owner = base
    with torch.no_grad():
        cc.W_enc[0][:, 0], cc.W_enc[1][:, 0] = u, 0.0
        cc.W_dec[0][0], cc.W_dec[1][0] = u, 0.0
    base = a[:, None] * u
    for tuned_has_it, expect in ((False, 0.0), (True, 1.0)):
        tuned = a[:, None] * u if tuned_has_it else torch.zeros(200, d)
        sc = latent_scaling(cc, [torch.cat([base, tuned], 1)], [0], owner=0)
        assert abs(float(sc["nu_eps"][0]) - expect) < 1e-6, sc


# -- a planted difference in a real model --------------------------------------------------------------------------
def _texts(n: int = 240) -> list[str]:
    from actlab.data import read_texts

    return read_texts(shared_path("data", "imdb", "imdb_train_sample.csv"), limit=n)


def _planted(texts: list[str]):
    """tinystories-656k and a copy whose layer-1 MLP output gains u * relu(w . x - b) for one token class: 24
    tokens drawn at random among the 300 most frequent; w is the class's ridge-regularised linear discriminant on
    the MLP inputs and b puts the unit on for the class only; the write's size is about a quarter of the residual
    stream's mean norm there. (A class of the most frequent tokens with w their mean difference is found too, but
    its base residual leaks into the latent's base decoder: see docs/diffing.md.)"""
    import actlab

    base = actlab.load_model("tinystories-656k")
    tuned = actlab.load_model("tinystories-656k")
    mlp = tuned.hf.model.layers[1].mlp
    grabbed: list[torch.Tensor] = []
    h = mlp.register_forward_hook(lambda m, args, out: grabbed.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    ids_all = []
    with torch.no_grad():
        for t in texts[:60]:
            ids = tuned.tokenizer(t, return_tensors="pt", truncation=True, max_length=64)["input_ids"]
            tuned.hf(input_ids=ids)
            ids_all.append(ids[0])
    h.remove()
    x = torch.cat(grabbed)
    every = torch.cat(ids_all)
    frequent = torch.bincount(every).topk(300).indices
    chosen = frequent[torch.randperm(len(frequent), generator=torch.Generator().manual_seed(3))[:24]]
    cls = torch.isin(every, chosen)
    xc = x - x.mean(0)
    cov = xc.T @ xc / len(x)
    w = torch.linalg.solve(cov + 0.1 * cov.diagonal().mean() * torch.eye(x.shape[-1]), x[cls].mean(0) - x[~cls].mean(0))
    w /= w.norm()
    proj = x @ w
    b = float(max(proj[~cls].quantile(0.999), proj[cls].quantile(0.05)))
    g = torch.Generator().manual_seed(0)
    u = torch.randn(x.shape[-1], generator=g)
    u /= u.norm()
    batch = tuned.tokenizer(texts[:8], return_tensors="pt", padding=True, truncation=True, max_length=64)
    resid = tuned.activations(batch, POINT, positions="all", dtype=torch.float32)[POINT][batch["attention_mask"].bool()]
    scale = 0.25 * float(resid.norm(dim=-1).mean()) / float((torch.relu(proj[cls] - b)).mean())

    def plant(module, args, out):
        return out + scale * torch.relu(args[0] @ w.to(out.dtype) - b)[..., None] * u.to(out.dtype)

    mlp.register_forward_hook(plant)
    fires = (torch.relu(proj - b) > 0)
    precision = float(fires[cls].sum() / fires.sum().clamp_min(1))
    return base, tuned, u, precision


def _run(base, tuned, texts, out: Path, **kw) -> dict:
    from actlab.jobs.diffing import crosscoder

    crosscoder(base, tuned, texts, out, point=POINT, expansion=kw.pop("expansion", 4), max_length=64,
               steps=kw.pop("steps", 800), batch_size=512, lr=kw.pop("lr", 2e-3), dashboards=kw.pop("dashboards", 0),
               **kw)
    return json.loads((out / "latents.json").read_text())


def test_a_planted_difference_is_a_tuned_only_latent_and_the_same_model_twice_has_none(tmp_path):
    shared_path("models", "tinystories-656k")
    texts = _texts()
    base, tuned, u, precision = _planted(texts)
    assert precision > 0.8  # the planted unit fires on the token class
    res = _run(base, tuned, texts, tmp_path / "planted", k=8, expansion=2, dashboards=2)
    cc = load_crosscoder(tmp_path / "planted" / "crosscoder" / res["config"]["name"])
    w1 = cc.W_dec[1].detach()
    cos = w1 @ u / w1.norm(dim=-1)
    best = int(cos.argmax())
    found = res["latents"][best]
    live = [x["delta"] for x in res["latents"] if x["class"] != "dead"]
    print("planted: classes", res["summary"]["classes"], "latent", found)
    assert float(cos[best]) >= 0.9  # a latent writes the planted direction into the tuned model ...
    assert found["delta"] == max(live) and found["delta"] >= 0.75  # ... and it is the most tuned-leaning of all
    # (under the paper's 0.9 cut it is tuned-only in some runs, not all: the class's base residual leaks into its
    # base decoder, docs/diffing.md)
    # latent scaling (Minder et al.): the base model's error carries almost none of it - a genuinely tuned latent
    assert found["scaling"]["nu_eps"] is not None and abs(found["scaling"]["nu_eps"]) < 0.3
    assert (tmp_path / "planted" / "tuned_leaning_latents.html").is_file()
    # control: the base model against itself
    ctrl = _run(base, base, texts, tmp_path / "control", k=8, expansion=2)
    print("control: classes", ctrl["summary"]["classes"])
    assert ctrl["summary"]["model_specific_fraction"] <= 0.02, ctrl["summary"]
    assert max(x["delta"] for x in ctrl["latents"] if x["class"] != "dead") < 0.75
    # the L1 variant on the planted pair: Minder et al.'s artifact (more model-specific latents) is recorded
    l1 = _run(base, tuned, texts, tmp_path / "l1", expansion=2, architecture="l1", l1=0.5)
    n_l1 = l1["summary"]["classes"]["tuned-only"] + l1["summary"]["classes"]["base-only"]
    n_bt = res["summary"]["classes"]["tuned-only"] + res["summary"]["classes"]["base-only"]
    print(f"model-specific latents: L1 {n_l1}, BatchTopK {n_bt}")
    (tmp_path / "l1_vs_batchtopk.json").write_text(json.dumps({"l1": n_l1, "batchtopk": n_bt}))


def test_paired_caches_refuse_another_token_stream(tmp_path):
    import actlab
    from actlab.errors import InputError
    from actlab.sae import cache_activations

    shared_path("models", "tinystories-656k")
    m = actlab.load_model("tinystories-656k")
    texts = _texts(20)
    cache_activations(m, texts, POINT, tmp_path / "a", max_length=32)
    cache_activations(m, texts[:-1], POINT, tmp_path / "b", max_length=32)
    with pytest.raises(InputError, match="same token stream"):
        PairedReader([tmp_path / "a", tmp_path / "b"], [POINT, POINT])
    r = PairedReader([tmp_path / "a", tmp_path / "a"], [POINT, POINT])
    x = next(r.batches(64, seed=0))
    assert x.shape == (64, 2 * m.d_model) and torch.equal(x[:, :m.d_model], x[:, m.d_model:])


# -- resume and data parallelism -------------------------------------------------------------------------------
def test_crosscoder_resumes_bit_exact_after_kill_9(tmp_path):
    shared_path("models", "tinystories-656k")
    data = shared_path("data", "imdb", "imdb_train_sample.csv")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "actlab", "diff", "crosscoder", "tinystories-656k", "tinystories-656k", "--data",
            str(data), "--limit", "80", "--max-length", "48", "--steps", "300", "--batch-size", "256",
            "--expansion", "2", "--k", "8", "--checkpoint-every", "50", "--dashboards", "0", "--point", POINT]
    subprocess.run([*base, "--out", str(tmp_path / "clean")], check=True, env=env, capture_output=True, timeout=600)
    p = subprocess.Popen([*base, "--out", str(tmp_path / "killed")], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    ck = tmp_path / "killed" / "checkpoints"
    t0 = time.time()
    while p.poll() is None and not list(ck.glob("step_*")) and time.time() - t0 < 300:
        time.sleep(0.05)
    assert p.poll() is None, "finished before it could be killed"
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    r = subprocess.run([*base, "--out", str(tmp_path / "killed")], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    name = json.loads((tmp_path / "clean" / "latents.json").read_text())["config"]["name"]
    a = (tmp_path / "clean" / "crosscoder" / name / "crosscoder.safetensors").read_bytes()
    b = (tmp_path / "killed" / "crosscoder" / name / "crosscoder.safetensors").read_bytes()
    assert a == b
    assert json.loads((tmp_path / "killed" / "train_config.json").read_text())["resumed"]["from_step"] > 0


_CC = [CrosscoderConfig(d_ins=(8, 8), d_sae=32, architecture="batchtopk", k=3),
       CrosscoderConfig(d_ins=(8, 8), d_sae=24, architecture="l1", l1_coefficient=0.2)]
_TRAIN = TrainConfig(steps=20, batch_size=64, lr=3e-3, seed=0, dead_steps=3)


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    shared = torch.randn(2000, 8, generator=g)
    return torch.cat([shared, shared + 0.3 * torch.randn(2000, 8, generator=g)], 1)


def _stream(x: torch.Tensor, bs: int):
    def make(start: int):
        def gen():
            for s in range(0, len(x) - bs + 1, bs):
                yield x[s:s + bs]
        it = gen()
        for _ in range(start):
            next(it)
        return it
    return make


def test_two_processes_train_the_crosscoder_one_process_trains():
    x = _data()
    ddp = train_in_two_processes(_CC, _TRAIN, _stream, x, 64)
    tr = Trainer(_CC, _TRAIN)
    tr.fit(_stream(x, 64))
    for cc, state in zip(tr.saes, ddp, strict=True):
        for k, v in cc.state_dict().items():
            torch.testing.assert_close(state[k], v, atol=2e-5, rtol=1e-4, msg=k)


def test_analyse_counts_every_latent_once():
    cc = Crosscoder(CrosscoderConfig(d_ins=(8, 8), d_sae=16, k=2), generator=torch.Generator().manual_seed(0))
    res = analyse(cc, [_data()[:256]])
    assert sum(res["summary"]["classes"].values()) == 16 and len(res["latents"]) == 16
