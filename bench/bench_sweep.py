"""A/B sweep (layers x multipliers x questions): prefix KV reuse + several cells per forward, against
steering each cell in turn over the whole prompt (the path before prefix reuse), in one run.

Target: >= 5x on CPU for 3 layers x 5 multipliers x 50 CAA questions (chat template, steering from the end
of the instruction), same probabilities to float round-off (the max difference is printed).

    ACTLAB_DATA_DIR=../shared/data python bench/bench_sweep.py             # SmolLM2-135M-Instruct, CPU
    ACTLAB_DATA_DIR=../shared/data python bench/bench_sweep.py --gpu-7b    # random-init Llama-2-7B, bf16, cuda
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from actlab.steering import SteeringVector, load_ab, resolve_style, steer
from actlab.steering.evaluate import ab_probabilities, ab_sweep
from common import bench_model, machine, sync


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--layers", default="8,12,16")
    ap.add_argument("--multipliers", default="-2,-1,0,1,2")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--cells-per-batch", default="4")
    ap.add_argument("--dataset", default="caa/test/sycophancy/test_dataset_ab.json")
    ap.add_argument("--skip-baseline", action="store_true", help="time only the prefix-reusing sweep")
    ap.add_argument("--refusal-candidates", type=int, default=30, help="0 skips the refusal-scoring part")
    ap.add_argument("--refusal-prompts", type=int, default=32)
    ap.add_argument("--gpu-7b", action="store_true")
    args = ap.parse_args()
    data = os.environ.get("ACTLAB_DATA_DIR")
    if not data:
        raise SystemExit("set ACTLAB_DATA_DIR to the shared data folder (CAA questions)")
    model = bench_model(args.model, args.gpu_7b)
    if args.gpu_7b:  # a random-init model has no chat template: reuse SmolLM2-style prompts is not possible
        raise SystemExit("--gpu-7b needs a tokenizer with a chat template; pass --model with one")
    items = load_ab(os.path.join(data, *args.dataset.split("/")), limit=args.questions)
    style = resolve_style(model)
    layers = [int(x) for x in args.layers.split(",")]
    mults = [float(x) for x in args.multipliers.split(",")]
    g = torch.Generator().manual_seed(0)
    vec = SteeringVector({layer: 2 * torch.randn(model.d_model, generator=g) for layer in layers}, "resid_pre", {})
    n_cells = len(layers) * len(mults)
    print(f"# sweep benchmark {time.strftime('%Y-%m-%d')} - {machine()}")
    print(f"model {model.name}: {model.n_layers} layers, {model.dtype}, {model.device}; {len(items)} questions "
          f"({args.dataset}), layers {layers} x multipliers {mults} = {n_cells} cells, "
          f"question batch {args.batch_size}")

    def cell_by_cell() -> dict[str, torch.Tensor]:
        out = {"base": ab_probabilities(model, items, style, batch_size=args.batch_size)}
        for layer in layers:
            for m in mults:
                if m != 0:
                    with steer(model, vec, m, layers=[layer], positions="from_eoi"):
                        out[f"{layer}:{m:g}"] = ab_probabilities(model, items, style, batch_size=args.batch_size)
        return out

    ref, t_ref = None, None
    if not args.skip_baseline:
        sync()
        t0 = time.perf_counter()
        ref = cell_by_cell()
        sync()
        t_ref = time.perf_counter() - t0
        print(f"cell by cell (whole prompt per cell)      {t_ref:8.2f} s  "
              f"{len(items) * n_cells / t_ref:7.1f} question-cells/s  1.00x")
    for k in (int(x) for x in args.cells_per_batch.split(",")):
        sync()
        t0 = time.perf_counter()
        res = ab_sweep(model, vec, items, layers=layers, multipliers=mults, style=style,
                       batch_size=args.batch_size, cells_per_batch=k)
        sync()
        t = time.perf_counter() - t0
        line = (f"prefix reuse, {k:2d} cells per forward       {t:8.2f} s  {len(items) * n_cells / t:7.1f} "
                f"question-cells/s")
        if ref is not None and t_ref is not None:
            diff = max(float((torch.tensor(c["per_question"]) - ref["base" if c["multiplier"] == 0 else key]).abs()
                             .max()) for key, c in res.cells.items())
            line += f"  {t_ref / t:5.2f}x  (max |dp| {diff:.1e})"
        print(line)
    if args.refusal_candidates:
        bench_refusal(model, data, args.refusal_candidates, args.refusal_prompts, args.batch_size)


def bench_refusal(model, data: str, n_cands: int, n_prompts: int, batch_size: int) -> None:
    """The refusal pipeline's ``induce`` scores: each candidate added in turn vs shared prefixes."""
    from actlab.data import load_instructions
    from actlab.hooks.points import HookPoint
    from actlab.steering.apply import Addition, Steering
    from actlab.steering.prompts import format_prompt
    from actlab.steering.refusal import (
        REFUSAL_PHRASES,
        _last_logits,
        _refusal_logodds,
        induce_scores,
        refusal_token_ids,
    )

    style = resolve_style(model)
    texts = [format_prompt(model, t, style) for t in load_instructions(
        os.path.join(data, "refusal_direction", "splits", "harmless_val.json"))[:n_prompts]]
    ref_ids = torch.tensor(refusal_token_ids(model, REFUSAL_PHRASES))
    g = torch.Generator().manual_seed(1)
    cands = [(i % model.n_layers, torch.randn(model.d_model, generator=g)) for i in range(n_cands)]
    sync()
    t0 = time.perf_counter()
    ref = []
    for layer, r in cands:
        with Steering(model, [Addition(HookPoint(layer, "resid_pre"), r, 1.0)]):
            ref.append(float(_refusal_logodds(_last_logits(model, texts, style, batch_size), ref_ids).mean()))
    sync()
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = induce_scores(model, texts, style, cands, ref_ids, batch_size)
    sync()
    t = time.perf_counter() - t0
    diff = max(abs(a - b) for a, b in zip(got, ref, strict=True))
    print(f"refusal induce scores, {n_cands} candidates x {n_prompts} harmless prompts: each in turn {t_ref:.2f} s, "
          f"shared prefixes {t:.2f} s, {t_ref / t:.2f}x (max |d score| {diff:.1e})")


if __name__ == "__main__":
    main()
