"""Sparse autoencoders: dictionary invariants, exact resume, data parallelism, caches, metrics, features."""

from __future__ import annotations

import json

import pytest
import torch

from actlab.errors import InputError
from actlab.hooks import count_hooks
from actlab.sae import (
    CacheError,
    CacheReader,
    FeatureEdit,
    SAEConfig,
    SparseAutoencoder,
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    cache_activations,
    downstream_loss,
    load_sae,
    overlap,
    read_texts,
    reconstruction_metrics,
    save_sae,
    train_saes,
)
from actlab.sae.train import skip
from conftest import shared_path
from tiny_models import tiny_model
from two_process import train_in_two_processes


def _data(n=4096, d=16, seed=0):
    """Synthetic sparse data: 64 ground-truth directions, each token a sparse combination."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(64, d, generator=g)
    codes = torch.rand(n, 64, generator=g) * (torch.rand(n, 64, generator=g) < 0.05)
    return codes @ dirs + 0.01 * torch.randn(n, d, generator=g)


def _stream(x, bs, seed=0):
    def make(start):
        def gen():
            g = torch.Generator().manual_seed(seed)
            while True:
                perm = torch.randperm(len(x), generator=g)
                for s in range(0, len(x) - bs + 1, bs):
                    yield x[perm[s:s + bs]]
        return skip(gen(), start)
    return make


def test_dictionary_shapes_norms_and_topk():
    for cfg in (SAEConfig(16, 32), SAEConfig(16, 32, tied=True), SAEConfig(16, 48, architecture="topk", k=4)):
        sae = SparseAutoencoder(cfg)
        assert sae.W_enc.shape == (16, cfg.d_sae) and sae.W_dec.shape == (cfg.d_sae, 16)
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(cfg.d_sae))
        x = torch.randn(5, 16)
        x_hat, f = sae(x)
        assert x_hat.shape == x.shape and (f >= 0).all()
        if cfg.architecture == "topk":
            assert ((f > 0).sum(-1) <= 4).all()
    with pytest.raises(Exception, match="k"):
        SAEConfig(16, 32, architecture="topk")
    with pytest.raises(Exception, match="architecture"):
        SAEConfig(16, 32, architecture="gated")


def test_training_learns_and_keeps_decoder_unit_norm(tmp_path):
    x = _data()
    cfgs = [SAEConfig(16, 64, l1_coefficient=1e-3), SAEConfig(16, 128, l1_coefficient=1e-3),
            SAEConfig(16, 64, l1_coefficient=0.3), SAEConfig(16, 64, architecture="topk", k=4)]
    tcfg = TrainConfig(steps=300, batch_size=256, lr=3e-3, warmup_steps=20, l1_warmup_steps=50, log_every=50)
    saes, hist = train_saes(cfgs, _stream(x, 256), tcfg, out_dir=tmp_path)
    assert len(hist) == 6
    metrics = {}
    for sae in saes:
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.cfg.d_sae), atol=1e-5, rtol=0)
        metrics[sae.cfg.name] = reconstruction_metrics(sae, [x[:1024]])
        assert (tmp_path / "saes" / sae.cfg.name / "cfg.json").is_file()
    weak, wide, strong, topk = (metrics[c.name] for c in cfgs)
    assert weak["explained_variance"] > 0.95 and wide["explained_variance"] > 0.95
    assert strong["l0"] < weak["l0"] and strong["explained_variance"] < weak["explained_variance"]
    assert topk["l0"] <= 4 and topk["explained_variance"] > 0.7
    name = cfgs[0].name
    assert hist[-1][name]["mse"] < hist[0][name]["mse"]
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 6


def test_fixed_seed_and_exact_resume(tmp_path):
    x = _data(seed=1)
    cfgs = [SAEConfig(16, 32, l1_coefficient=1e-3), SAEConfig(16, 32, tied=True, l1_coefficient=1e-3),
            SAEConfig(16, 64, architecture="topk", k=2)]
    tcfg = TrainConfig(steps=40, batch_size=128, lr=1e-3, warmup_steps=5, checkpoint_every=20, seed=3,
                       resample_every=15, dead_steps=3)
    full, _ = train_saes(cfgs, _stream(x, 128), tcfg, out_dir=tmp_path / "a")
    again, _ = train_saes(cfgs, _stream(x, 128), tcfg, out_dir=tmp_path / "b")
    # a run that crashes after step 25 (last checkpoint: step 20), then resumed from its folder
    def crashing(start):
        it = _stream(x, 128)(start)
        for _ in range(25 - start):
            yield next(it)
        raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train_saes(cfgs, crashing, tcfg, out_dir=tmp_path / "c")
    assert Trainer(cfgs, tcfg, out_dir=tmp_path / "c").latest_checkpoint().name == "step_00000020"
    resumed, _ = train_saes(cfgs, _stream(x, 128), tcfg, out_dir=tmp_path / "c")
    for a, b, c in zip(full, again, resumed, strict=True):
        for (n, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
            assert torch.equal(pa, pb), n
            assert torch.equal(pa, pc), n


def test_topk_aux_loss_revives_dead_features():
    """Half the features start constant and below every live one, so they never make the top k: without the
    auxiliary loss they get no gradient and stay dead; with it (Gao et al.) most come back, and the
    reconstruction improves."""
    x = _data(n=8192, seed=4)
    dead_frac, mse = {}, {}
    for coef in (0.0, 1 / 32):
        tcfg = TrainConfig(steps=300, batch_size=256, lr=3e-3, dead_steps=10, aux_k_coefficient=coef, log_every=50)
        tr = Trainer([SAEConfig(16, 64, architecture="topk", k=4)], tcfg)
        with torch.no_grad():
            tr.saes[0].W_enc[:, 32:] = 0
            tr.saes[0].b_enc[32:] = 0.01
        tr.fit(_stream(x, 256))
        row = tr.history[-1][tr.configs[0].name]
        dead_frac[coef], mse[coef] = row["dead"], reconstruction_metrics(tr.saes[0], [x[:2048]])["mse"]
        assert (row["aux"] > 0) == (coef > 0)
    assert dead_frac[0.0] >= 0.4 and dead_frac[1 / 32] < dead_frac[0.0] - 0.2
    assert mse[1 / 32] < mse[0.0]
    # the auxiliary term reaches exactly the dead features' encoder columns
    sae = SparseAutoencoder(SAEConfig(16, 64, architecture="topk", k=4), generator=torch.Generator().manual_seed(0))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    xb = x[:64]
    x_hat, _ = sae(xb)
    sae.aux_loss(xb, ((xb - x_hat) * sae.input_scale).detach(), dead).backward()
    touched = sae.W_enc.grad.abs().sum(0) > 0
    assert touched[dead].any() and not touched[~dead].any()


def test_nan_loss_names_step_and_checkpoint(tmp_path):
    x = _data(n=512)
    tcfg = TrainConfig(steps=10, batch_size=64, checkpoint_every=3)

    def make(start):
        def gen():
            for i in range(100):
                yield x[:64] if i != 5 else torch.full((64, 16), float("nan"))
        return skip(gen(), start)

    with pytest.raises(TrainingDivergedError, match=r"at step 6; last good checkpoint: .*step_00000003"):
        train_saes([SAEConfig(16, 32)], make, tcfg, out_dir=tmp_path)


# a ReLU dictionary with resampling, and a TopK one whose dead features train through the auxiliary loss
_DDP_SAES = [SAEConfig(16, 32, l1_coefficient=1e-3), SAEConfig(16, 64, architecture="topk", k=2)]
_DDP_TRAIN = TrainConfig(steps=25, batch_size=128, lr=2e-3, seed=0, resample_every=10, dead_steps=2)


def test_two_process_gloo_matches_single_process():
    x = _data(seed=2)
    ddp = train_in_two_processes(_DDP_SAES, _DDP_TRAIN, _stream, x, 128)
    tr = Trainer(_DDP_SAES, _DDP_TRAIN)
    rows: list[dict] = []
    tr.fit(_stream(x, 128), rows.append)
    assert max(r[_DDP_SAES[1].name]["aux"] for r in rows) > 0
    for sae, state in zip(tr.saes, ddp, strict=True):
        for k, v in sae.state_dict().items():
            torch.testing.assert_close(state[k], v, atol=2e-5, rtol=1e-4)


def test_save_load_and_saelens_folder(tmp_path):
    sae = SparseAutoencoder(SAEConfig(16, 32, hook_point="blocks.1.mlp_out", model="m"))
    back = load_sae(save_sae(sae, tmp_path / "a"))
    for (n, p), q in zip(sae.named_parameters(), back.parameters(), strict=True):
        assert torch.equal(p, q), n
    cfg = json.loads((tmp_path / "a" / "cfg.json").read_text())
    assert cfg["architecture"] == "standard" and cfg["hook_name"] == "blocks.1.mlp_out"
    # a folder as SAELens writes it (no actlab keys)
    from safetensors.torch import save_file

    sl = tmp_path / "saelens"
    sl.mkdir()
    w = {"W_enc": torch.randn(16, 24), "W_dec": torch.randn(24, 16), "b_enc": torch.randn(24), "b_dec": torch.randn(16)}
    save_file(w, str(sl / "sae_weights.safetensors"))
    (sl / "cfg.json").write_text(json.dumps({"d_in": 16, "d_sae": 24, "architecture": "standard",
                                             "hook_name": "blocks.3.hook_resid_pre", "model_name": "gpt2",
                                             "apply_b_dec_to_input": True, "normalize_activations": "none"}))
    s2 = load_sae(sl)
    x = torch.randn(3, 16)
    want = torch.relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(s2(x)[0], want)
    (sl / "cfg.json").write_text(json.dumps({"d_in": 16, "d_sae": 24, "architecture": "gated"}))
    with pytest.raises(Exception, match="gated"):
        load_sae(sl)


def test_overlap_self_and_permuted():
    sae = SparseAutoencoder(SAEConfig(16, 32), generator=torch.Generator().manual_seed(0))
    perm = SparseAutoencoder(SAEConfig(16, 32))
    idx = torch.randperm(32)
    with torch.no_grad():
        perm.W_dec_param.copy_(sae.W_dec[idx])
    o = overlap(sae, perm)
    assert o["mean_max_cos_a_to_b"] == pytest.approx(1.0) and o["hungarian_mean_cos"] == pytest.approx(1.0)
    assert o["top_pairs"][0]["cos"] == pytest.approx(1.0)
    assert all(int(idx[p["feature_b"]]) == p["feature_a"] for p in o["top_pairs"])
    other = SparseAutoencoder(SAEConfig(16, 64), generator=torch.Generator().manual_seed(9))
    o2 = overlap(sae, other)
    assert o2["hungarian_mean_cos"] <= o2["mean_max_cos_a_to_b"] + 1e-9 < 1


@pytest.mark.parametrize("family,point", [("llama", "blocks.1.mlp_out"), ("llama", "blocks.1.resid_mid"),
                                          ("gpt_neox", "blocks.1.resid_mid")])
def test_feature_intervention_keeps_error_and_ablates(family, point):
    """resid_mid has no module of its own: the edit goes through attn_out and must still act on resid_mid."""
    m = tiny_model(family)
    hooks = count_hooks(m.hf)
    sae = SparseAutoencoder(SAEConfig(m.d_model, 64, hook_point=point))
    ids = torch.randint(3, 90, (2, 6), generator=torch.Generator().manual_seed(0))
    clean = m(input_ids=ids).logits
    with m.edit(FeatureEdit(sae, point, scale={})):
        torch.testing.assert_close(m(input_ids=ids).logits, clean, atol=1e-5, rtol=1e-5)  # nothing edited
    with m.capture(point) as before:
        m(input_ids=ids)
    f = sae.encode(before[point])
    alive = int((f > 0).sum((0, 1)).argmax())
    with m.edit(FeatureEdit(sae, point, ablate=[alive])), m.capture(point) as after:
        m(input_ids=ids)
    want = before[point] - f[..., alive:alive + 1] * sae.W_dec[alive].detach()
    torch.testing.assert_close(after[point], want, atol=1e-5, rtol=1e-5)
    assert count_hooks(m.hf) == hooks
    with pytest.raises(Exception, match=r"0\.\.63"):
        m.edit(FeatureEdit(sae, point, ablate=[64]))


def test_cache_resume_corruption_and_mismatch(tmp_path, tinystories):
    texts = read_texts(shared_path("data", "imdb", "imdb_train_sample.csv"), limit=24)
    out = tmp_path / "cache"
    man = cache_activations(tinystories, texts[:12], ["blocks.0.mlp_out", "blocks.1.mlp_out"], out, batch_size=4,
                            shard_tokens=300, max_length=64)
    assert man["complete"] and len(man["shards"]) >= 2
    # reading back equals a direct capture of the same tokens (pads and BOS dropped)
    r = CacheReader(out, "blocks.1.mlp_out", model=tinystories.name)
    first = r.load_shard(0)
    enc = tinystories.tokenizer(texts[0], truncation=True, max_length=64)["input_ids"]
    ref = tinystories.activations(torch.tensor([enc]), "blocks.1.mlp_out", positions="all")["blocks.1.mlp_out"][0]
    torch.testing.assert_close(first[: len(enc) - 1], ref[1:], atol=1e-5, rtol=1e-5)
    assert r.n_tokens == sum(s["n_tokens"] for s in man["shards"])
    # an interrupted run resumes after its last shard
    part = tmp_path / "part"
    m1 = cache_activations(tinystories, texts, "blocks.1.mlp_out", part, batch_size=4, shard_tokens=300,
                           max_length=64)
    full_tokens = m1["n_tokens"]
    # what a kill after the second shard leaves: the resume record lists two shards, the cache is not complete
    rec_path = part / ".resume" / "acts-cache.json"
    rec = json.loads(rec_path.read_text())
    state = rec["progress"]["state"]
    state["shards"] = state["shards"][:2]
    state["n_tokens"] = sum(s["n_tokens"] for s in state["shards"])
    state["n_texts_done"] = state["shards"][-1]["texts"][1]
    del rec["steps"]["complete"]
    rec_path.write_text(json.dumps(rec))
    before = state["n_tokens"]
    from actlab.runs import TMP_PREFIX, TMP_SUFFIX

    stale = part / f"{TMP_PREFIX}shard_00002.safetensors.x1{TMP_SUFFIX}"  # what a kill mid-write leaves
    stale.write_bytes(b"half a shard")
    (part / "shard_00099.safetensors").write_bytes(b"written after the last manifest update")
    m2 = cache_activations(tinystories, texts, "blocks.1.mlp_out", part, batch_size=4, shard_tokens=300,
                           max_length=64)
    assert m2["complete"] and m2["n_tokens"] == full_tokens and before < full_tokens
    assert not stale.exists() and not (part / "shard_00099.safetensors").exists()
    assert [s["sha256"] for s in m2["shards"]] == [s["sha256"] for s in m1["shards"]]  # same bytes as one run
    # corruption is caught by checksum, naming the file
    shard = part / m2["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match=r"shard_00001\.safetensors is corrupt or truncated"):
        CacheReader(part, "blocks.1.mlp_out").load_shard(1)
    with pytest.raises(CacheError, match=r"from model 'tinystories-656k', not 'stories260k'"):
        CacheReader(out, "blocks.1.mlp_out", model="stories260k")
    with pytest.raises(CacheError, match=r"not hook point 'blocks\.1\.attn_out'"):
        CacheReader(out, "blocks.1.attn_out")
    with pytest.raises(InputError, match=r"other settings: d\.blocks\.0\.attn_out \(None -> 128\)"):
        cache_activations(tinystories, texts[:12], "blocks.0.attn_out", out)


def test_downstream_loss_recovered(tinystories):
    texts = read_texts(shared_path("data", "imdb", "imdb_train_sample.csv"), limit=6)

    class Identity(SparseAutoencoder):
        def forward(self, x):
            return x, torch.zeros(*x.shape[:-1], self.cfg.d_sae)

    ident = Identity(SAEConfig(tinystories.d_model, 8))
    for point in ("blocks.1.mlp_out", "blocks.1.resid_mid"):
        d = downstream_loss(tinystories, ident, point, texts, max_length=48)
        assert d["spliced"] == pytest.approx(d["clean"]) and d["loss_recovered"] == pytest.approx(1.0)
        assert d["zero_ablation"] > d["clean"]


def test_read_texts_formats(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_dict({"text": ["one", "two", "three"]}).save_to_disk(str(tmp_path / "ds"))
    assert read_texts(tmp_path / "ds") == ["one", "two", "three"]
    DatasetDict({"train": Dataset.from_dict({"review": ["a", "b"]})}).save_to_disk(str(tmp_path / "dd"))
    assert read_texts(tmp_path / "dd") == ["a", "b"]
    (tmp_path / "t.txt").write_text("first line\n\nsecond line\n")
    assert read_texts(tmp_path / "t.txt") == ["first line", "second line"]
    (tmp_path / "t.jsonl").write_text('{"text": "x"}\n{"other": 1}\n')
    with pytest.raises(Exception, match=r"t\.jsonl:2: no field named text"):
        read_texts(tmp_path / "t.jsonl")


def test_cache_refuses_when_the_disk_is_too_small(tmp_path, tinystories, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CacheError, match=r"needs about .* GB .* has 0\.00 GB free"):
        cache_activations(tinystories, ["Once upon a time"] * 4, "blocks.0.mlp_out", tmp_path / "c")


def test_per_head_points_cache_as_rows_and_patterns_are_refused(tmp_path, tinystories):
    """attn.z is cached as one row per token (heads side by side, n_heads * d_head wide, what attention SAEs
    read), equal to the capture; a pattern (its width is the number of keys) is refused in one line."""
    texts = read_texts(shared_path("data", "imdb", "imdb_train_sample.csv"), limit=9)
    m = tinystories
    man = cache_activations(m, texts, "blocks.1.attn.z", tmp_path / "z", batch_size=2, shard_tokens=10_000,
                            max_length=24)
    assert man["d"]["blocks.1.attn.z"] == m.n_heads * m.d_head
    rows = CacheReader(tmp_path / "z", "blocks.1.attn.z").load_shard(0)
    enc = m.tokenizer(texts[0], truncation=True, max_length=24)["input_ids"]
    ref = m.activations(torch.tensor([enc]), "blocks.1.attn.z", positions="all")["blocks.1.attn.z"][0]
    torch.testing.assert_close(rows[: len(enc) - 1], ref[1:].reshape(len(enc) - 1, -1), atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="attention pattern"):
        cache_activations(m, texts, "blocks.1.attn.pattern", tmp_path / "p", batch_size=2, max_length=24)
