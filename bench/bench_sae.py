"""SAE training throughput vs the matmul bound, and activation caching vs a plain forward.

Targets: a ReLU + L1 training step at d_in 576, 8x expansion, batch 4096 runs at >= 0.85 of the matmul bound
(the five matmuls a step needs - encoder and decoder forward, and the three backward products - into
preallocated outputs, on the same shapes in the same run); a TopK step (k=32, 16x) costs <= 0.5 of the dense
ReLU step of the same shape; a BatchTopK crosscoder step over two such models runs at >= 0.5 of the same five
matmuls at the summed width; caching costs <= 1.15x a plain forward plus disk time.

    python bench/bench_sae.py [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import torch

import actlab
from actlab.sae import SAEConfig, TrainConfig, Trainer, cache_activations, read_texts
from actlab.sae.store import _token_batch
from common import machine, sync, time_interleaved


def bench_training(args) -> None:
    dev = torch.device(args.device)
    d, m, b = args.d_in, args.d_in * args.expansion, args.batch
    tr = Trainer([SAEConfig(d, m, l1_coefficient=1.0)], TrainConfig(steps=10**6, batch_size=b), device=dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, d, generator=g).to(dev)
    wa, wb = torch.randn(d, m, device=dev), torch.randn(m, d, device=dev)
    f, gx = torch.randn(b, m, device=dev), torch.randn(b, d, device=dev)
    o_bm, o_bm2, o_bd = torch.empty(b, m, device=dev), torch.empty(b, m, device=dev), torch.empty(b, d, device=dev)
    o_md, o_dm = torch.empty(m, d, device=dev), torch.empty(d, m, device=dev)

    def matmuls():  # into preallocated outputs: the floor, with no allocation or page faults
        torch.mm(x, wa, out=o_bm)       # encoder forward
        torch.mm(f, wb, out=o_bd)       # decoder forward
        torch.mm(f.T, gx, out=o_md)     # grad W_dec
        torch.mm(gx, wb.T, out=o_bm2)   # grad codes
        torch.mm(x.T, f, out=o_dm)      # grad W_enc

    def step():
        tr.train_step(x)

    t = time_interleaved({"matmul_bound": matmuls, "train_step": step}, repeats=args.repeats, warmup=2)
    flops = 5 * 2 * b * d * m
    print(f"SAE training, d_in {d}, d_sae {m} ({args.expansion}x), batch {b}, {dev}, median of {args.repeats}")
    print(f"  matmul bound (5 matmuls)  {t['matmul_bound'] * 1e3:8.1f} ms  {b / t['matmul_bound']:9.0f} tok/s  "
          f"{flops / t['matmul_bound'] / 1e9:6.1f} GFLOP/s")
    print(f"  train step (ReLU+L1, Adam) {t['train_step'] * 1e3:8.1f} ms  {b / t['train_step']:9.0f} tok/s  "
          f"{t['matmul_bound'] / t['train_step']:.2f} of the bound")


def bench_topk(args) -> None:
    """TopK (sparse decoder and backward) against the dense ReLU step of the same shape."""
    dev = torch.device(args.device)
    d, b = args.d_in, args.batch
    m = d * args.topk_expansion
    relu = Trainer([SAEConfig(d, m, l1_coefficient=1.0)], TrainConfig(steps=10**6, batch_size=b), device=dev)
    topk = Trainer([SAEConfig(d, m, architecture="topk", k=args.k)], TrainConfig(steps=10**6, batch_size=b),
                   device=dev)
    x = torch.randn(b, d, generator=torch.Generator().manual_seed(0)).to(dev)
    t = time_interleaved({"relu": lambda: relu.train_step(x), "topk": lambda: topk.train_step(x)},
                         repeats=args.repeats, warmup=2)
    print(f"TopK vs dense ReLU, d_in {d}, d_sae {m} ({args.topk_expansion}x), k {args.k}, batch {b}, {dev}")
    print(f"  ReLU + L1 step (dense)     {t['relu'] * 1e3:8.1f} ms  1.00")
    print(f"  TopK step (sparse decoder) {t['topk'] * 1e3:8.1f} ms  {t['topk'] / t['relu']:.2f} of the dense step")


def bench_crosscoder(args) -> None:
    """A BatchTopK crosscoder step over two models of width d_in against the same five matmuls at the summed width
    (its encoder reads both models, its decoder writes both)."""
    from actlab.crosscoder import CrosscoderConfig

    dev = torch.device(args.device)
    d, m, b = 2 * args.d_in, args.d_in * args.expansion, args.batch
    cfg = CrosscoderConfig(d_ins=(args.d_in, args.d_in), d_sae=m, k=args.k)
    tr = Trainer([cfg], TrainConfig(steps=10**6, batch_size=b), device=dev)
    x = torch.randn(b, d, generator=torch.Generator().manual_seed(0)).to(dev)
    wa, wb = torch.randn(d, m, device=dev), torch.randn(m, d, device=dev)
    f, gx = torch.randn(b, m, device=dev), torch.randn(b, d, device=dev)
    o_bm, o_bm2, o_bd = torch.empty(b, m, device=dev), torch.empty(b, m, device=dev), torch.empty(b, d, device=dev)
    o_md, o_dm = torch.empty(m, d, device=dev), torch.empty(d, m, device=dev)

    def matmuls():
        torch.mm(x, wa, out=o_bm)
        torch.mm(f, wb, out=o_bd)
        torch.mm(f.T, gx, out=o_md)
        torch.mm(gx, wb.T, out=o_bm2)
        torch.mm(x.T, f, out=o_dm)

    t = time_interleaved({"matmul_bound": matmuls, "train_step": lambda: tr.train_step(x)}, repeats=args.repeats,
                         warmup=2)
    print(f"crosscoder training, 2 models x d_in {args.d_in}, d_sae {m} ({args.expansion}x), BatchTopK k {args.k}, "
          f"batch {b} (token pairs), {dev}, median of {args.repeats}")
    print(f"  matmul bound (5 matmuls)  {t['matmul_bound'] * 1e3:8.1f} ms  {b / t['matmul_bound']:9.0f} tok/s")
    print(f"  train step (BatchTopK, Adam) {t['train_step'] * 1e3:8.1f} ms  {b / t['train_step']:9.0f} tok/s  "
          f"{t['matmul_bound'] / t['train_step']:.2f} of the bound")


def bench_cache(args) -> None:
    data = os.environ.get("ACTLAB_DATA_DIR")
    if not data:
        print("caching benchmark skipped: ACTLAB_DATA_DIR is not set")
        return
    model = actlab.load_model(args.model, dtype="float32", device=args.device)
    texts = read_texts(os.path.join(data, "imdb", "imdb_train_sample.csv"), limit=args.texts)
    points = [f"blocks.{model.n_layers // 3}.mlp_out", f"blocks.{2 * model.n_layers // 3}.mlp_out"]
    bs = 16
    batches = [_token_batch(model, texts[s:s + bs], 128) for s in range(0, len(texts), bs)]

    @torch.no_grad()
    def plain():
        for batch in batches:
            model.hf(**batch, use_cache=False)

    @torch.no_grad()
    def capture_only():
        for batch in batches:
            model.activations(batch, points, positions=batch["attention_mask"].bool())

    @torch.no_grad()
    def capture_full():
        for batch in batches:
            with model.capture(points, positions=batch["attention_mask"].bool()):
                model.hf(**batch, use_cache=False)

    t = time_interleaved({"plain": plain, "capture": capture_only, "capture_full": capture_full}, repeats=3)
    tmp = tempfile.mkdtemp()
    try:
        sync()
        t0 = time.perf_counter()
        man = cache_activations(model, texts, points, tmp, batch_size=bs, max_length=128, shard_tokens=32768)
        sync()
        t_cache = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = man["n_tokens"]
    print(f"caching {len(texts)} IMDb texts (<=128 tokens, {n} tokens kept) at {points}, {model.name}, float32")
    print(f"  plain forward            {t['plain']:7.2f} s  1.000x")
    print(f"  capture, full forward    {t['capture_full']:7.2f} s  {t['capture_full'] / t['plain']:.3f}x  "
          "(hooks only, no early stop)")
    print(f"  capture (no disk)        {t['capture']:7.2f} s  {t['capture'] / t['plain']:.3f}x  "
          "(stops after the last point)")
    print(f"  cache_activations (disk) {t_cache:7.2f} s  {t_cache / t['plain']:.3f}x  "
          f"({n * sum(man['d'].values()) * 4 / 1e6:.0f} MB written, incl. tokenization, size estimate, checksums)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--expansion", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--topk-expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--texts", type=int, default=96)
    args = ap.parse_args()
    print(f"# SAE benchmark {time.strftime('%Y-%m-%d')} - {machine()}")
    bench_training(args)
    bench_topk(args)
    bench_crosscoder(args)
    bench_cache(args)


if __name__ == "__main__":
    main()
