"""Attention internals and attribution patching vs plain passes (issue 14).

- Reading q/k/v/z keeps the model's attention kernel: target ~1.0x a plain forward.
- Reading the pattern computes the hooked layers' probabilities beside their kernel (materialised
  [batch, head, seq, seq]); one layer and every layer are timed against the plain forward in the same run.
- Attribution patching over resid_pre/attn_out/mlp_out at every layer and position: one clean forward with
  capture, one corrupted forward + backward with gradient capture, against a plain forward + backward.

    python bench/bench_attention.py                     # SmolLM2-135M, float32, CPU, batch 8 x 128
    python bench/bench_attention.py --gpu-7b            # random Llama-2-7B shapes, bf16, on the GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from actlab.patching import attribution_patching, logit_diff
from common import bench_model, machine, random_batch, time_interleaved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gpu-7b", action="store_true", help="random-init Llama-2-7B shapes in bf16 on cuda")
    args = ap.parse_args()
    model = bench_model(args.model, args.gpu_7b)
    batch = random_batch(model, args.batch, args.seq, torch.Generator().manual_seed(0))
    ids = batch["input_ids"]
    n, mid = model.n_layers, model.n_layers // 2

    @torch.no_grad()
    def plain():
        return model.hf(**batch, use_cache=False)

    def under(points):
        @torch.no_grad()
        def run():
            with model.capture(points, positions="all", dtype=None, device=model.device):
                model.hf(**batch, use_cache=False)
        return run

    def fwd_bwd():
        out = model.hf(**batch, use_cache=False).logits[:, -1, :].float()
        (out[:, 5] - out[:, 9]).sum().backward()
        model.hf.zero_grad(set_to_none=True)

    one = ids[:1, : args.seq]
    corrupt = one.clone()
    corrupt[0, args.seq // 2] = (corrupt[0, args.seq // 2] + 7) % model.vocab_size

    def one_fwd_bwd():
        out = model.hf(input_ids=corrupt, use_cache=False).logits[:, -1, :].float()
        (out[:, 5] - out[:, 9]).sum().backward()
        model.hf.zero_grad(set_to_none=True)

    def attribution():
        attribution_patching(model, one, corrupt, logit_diff(5, 9), kinds="resid_pre,attn_out,mlp_out")

    fns = {"plain": plain, "qkvz_mid": under(f"blocks.{mid}.attn.q,blocks.{mid}.attn.k,blocks.{mid}.attn.v,"
                                             f"blocks.{mid}.attn.z"),
           "pattern_mid": under(f"blocks.{mid}.attn.pattern"), "pattern_all": under("attn.pattern"),
           "fwd_bwd": fwd_bwd, "one_fwd_bwd": one_fwd_bwd, "attribution": attribution}
    t = time_interleaved(fns, repeats=args.repeats)
    print(f"# attention internals benchmark {time.strftime('%Y-%m-%d')} - {machine()}")
    print(f"model {model.name}: {n} layers, {model.n_heads} heads ({model.n_kv_heads} KV), {model.dtype}, "
          f"{model.device}, attention {model.hf.config._attn_implementation}; batch {args.batch} x {args.seq}, "
          f"median of {args.repeats}")
    rows = [("plain forward", "plain", "plain"),
            (f"capture q,k,v,z of layer {mid}", "qkvz_mid", "plain"),
            (f"capture pattern of layer {mid}", "pattern_mid", "plain"),
            (f"capture pattern of all {n} layers", "pattern_all", "plain"),
            ("plain forward + backward (batch)", "fwd_bwd", "fwd_bwd"),
            ("plain forward + backward (1 prompt)", "one_fwd_bwd", "one_fwd_bwd"),
            (f"attribution patching, 3 kinds x {n} layers x {args.seq} positions", "attribution", "one_fwd_bwd")]
    for label, key, base in rows:
        print(f"{label:64s}{t[key] * 1e3:9.1f} ms  {t[key] / t[base]:.3f}x {base}")


if __name__ == "__main__":
    main()
