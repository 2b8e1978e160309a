"""Capture overhead vs a plain forward (issue: foundation).

Targets: capturing resid_post at every layer for the last token costs at most 1.10x a plain forward;
capturing one early layer with early stop is faster than a plain forward.

    python bench/bench_capture.py                       # SmolLM2-135M, float32, CPU, batch 8 x 128
    python bench/bench_capture.py --gpu-7b              # random Llama-2-7B shapes, bf16, on the GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from common import bench_model, machine, random_batch, time_interleaved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--early-layer", type=int, default=2)
    ap.add_argument("--gpu-7b", action="store_true", help="random-init Llama-2-7B shapes in bf16 on cuda")
    args = ap.parse_args()

    model = bench_model(args.model, args.gpu_7b)
    batch = random_batch(model, args.batch, args.seq, torch.Generator().manual_seed(0))
    all_post = [f"blocks.{i}.resid_post" for i in range(model.n_layers)]

    @torch.no_grad()
    def plain():
        return model.hf(**batch, use_cache=False)

    @torch.no_grad()
    def capture_ctx():  # hooks on every layer, full forward (logits computed too)
        with model.capture(all_post, positions="last"):
            model(**batch, use_cache=False)

    def capture_run():  # model.activations: stops after the last layer (no unembedding)
        model.activations(batch, all_post, positions="last")

    def early():
        model.activations(batch, f"blocks.{args.early_layer}.resid_post", positions="last")

    t = time_interleaved({"plain": plain, "capture_ctx": capture_ctx, "capture_run": capture_run,
                          "early": early}, repeats=args.repeats)
    toks = args.batch * args.seq
    print(f"# capture benchmark {time.strftime('%Y-%m-%d')} - {machine()}")
    print(f"model {model.name}: {model.n_layers} layers, d_model {model.d_model}, {model.dtype}, {model.device}; "
          f"batch {args.batch} x {args.seq} tokens, median of {args.repeats}")
    print(f"plain forward                                   {t['plain'] * 1e3:9.1f} ms  "
          f"{toks / t['plain']:9.0f} tok/s  1.000x")
    for key, label in [("capture_ctx", f"capture resid_post x{model.n_layers}, last token (full fwd)"),
                       ("capture_run", f"capture resid_post x{model.n_layers}, last token (stop)"),
                       ("early", f"capture blocks.{args.early_layer}.resid_post, early stop")]:
        print(f"{label:48s}{t[key] * 1e3:9.1f} ms  {toks / t[key]:9.0f} tok/s  {t[key] / t['plain']:.3f}x")


if __name__ == "__main__":
    main()
