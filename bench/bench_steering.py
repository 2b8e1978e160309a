"""Steering overhead vs plain generate(), and A/B-sweep throughput batched vs one question at a time.

Target: steered generate() (one vector, one layer, all generated positions) costs at most 1.05x plain
generate() on SmolLM2 on CPU; the sweep batches questions (questions/s reported for both).

    python bench/bench_steering.py            # SmolLM2-135M-Instruct, float32, CPU
    python bench/bench_steering.py --gpu-7b   # random-init Llama-2-7B shapes in bf16 on cuda (generate only)
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from actlab.steering import SteeringVector, load_ab, resolve_style, steer
from actlab.steering.evaluate import ab_probabilities
from common import bench_model, machine, random_batch, time_interleaved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--gpu-7b", action="store_true")
    args = ap.parse_args()

    model = bench_model(args.model, args.gpu_7b)
    layer = model.n_layers // 3
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector({layer: torch.randn(model.d_model, generator=g)}, "resid_post", {})
    batch = random_batch(model, args.batch, 16, g)
    n = args.new_tokens

    @torch.no_grad()
    def plain():
        model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    @torch.no_grad()
    def steered():
        with steer(model, vec, 4.0, positions="generated"):
            model.generate(**batch, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    t = time_interleaved({"plain": plain, "steered": steered}, repeats=args.repeats)
    toks = args.batch * n
    print(f"# steering benchmark {time.strftime('%Y-%m-%d')} - {machine()}")
    print(f"model {model.name}: {model.n_layers} layers, {model.dtype}, {model.device}; batch {args.batch}, "
          f"{n} new tokens, median of {args.repeats}")
    print(f"plain generate                        {t['plain']:8.3f} s  {toks / t['plain']:8.1f} tok/s  1.000x")
    print(f"steered generate (1 layer, generated) {t['steered']:8.3f} s  {toks / t['steered']:8.1f} tok/s  "
          f"{t['steered'] / t['plain']:.3f}x")

    data = os.environ.get("ACTLAB_DATA_DIR")
    if args.gpu_7b or not data:
        return
    items = load_ab(os.path.join(data, "caa", "test", "refusal", "test_dataset_ab.json"), limit=args.questions)
    style = resolve_style(model)

    def sweep_cell(bs: int):
        with steer(model, vec, 4.0, positions="from_eoi"):
            ab_probabilities(model, items, style, batch_size=bs)

    ts = time_interleaved({"batched": lambda: sweep_cell(16), "one_by_one": lambda: sweep_cell(1)}, repeats=3)
    for k in ("batched", "one_by_one"):
        print(f"A/B sweep cell, {k:10s} ({len(items)} CAA refusal questions) {ts[k]:7.2f} s  "
              f"{len(items) / ts[k]:6.2f} questions/s")


if __name__ == "__main__":
    main()
