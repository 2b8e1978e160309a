"""A/B sweep (layers x multipliers x questions): prefix KV reuse + several cells per forward, against
steering each cell in turn over the whole prompt (the path before prefix reuse), in one run.

Target: >= 5x on CPU for 3 layers x 5 multipliers x 50 CAA questions (chat template, steering from the end
of the instruction), same probabilities to float round-off (the max difference is printed).

    ACTLAB_DATA_DIR=../shared/data python bench/bench_sweep.py             # SmolLM2-135M-Instruct, CPU
    ACTLAB_DATA_DIR=... python bench/bench_sweep.py --model meta-llama/Llama-2-7b-chat-hf --device cuda \
        --dtype bfloat16                                                    # on a GPU (a chat model: no random init)
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from actlab.steering import SteeringVector, load_ab, resolve_style, steer
from actlab.steering.evaluate import ab_probabilities, ab_sweep
from common import machine, sync


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
    ap.add_argument("--gen-prompts", type=int, default=8, help="0 skips the generation part")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    data = os.environ.get("ACTLAB_DATA_DIR")
    if not data:
        print("sweep benchmark skipped: ACTLAB_DATA_DIR is not set (it needs the CAA questions)")
        return
    import actlab

    model = actlab.load_model(args.model, dtype=args.dtype, device=args.device)  # a chat model: real tokenizer
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
    if args.gen_prompts:
        bench_generations(model, data, vec, layers[0], args.gen_prompts)


def bench_generations(model, data: str, vec, layer: int, n_prompts: int, new_tokens: int = 24) -> None:
    """Greedy steered generations at 3 multipliers: one generate() per multiplier vs shared prefixes."""
    from actlab.data import load_instructions
    from actlab.steering.evaluate import steered_generations
    from actlab.steering.prompts import format_prompt

    style = resolve_style(model)
    prompts = load_instructions(os.path.join(data, "refusal_direction", "splits", "harmless_val.json"))[:n_prompts]
    texts = [format_prompt(model, p, style) for p in prompts]
    mults = [0.0, -2.0, 2.0]
    kw = dict(max_new_tokens=new_tokens, add_special_tokens=style.add_special_tokens())
    sync()
    t0 = time.perf_counter()
    ref = {}
    for m in mults:
        if m == 0:
            ref[m] = model.generate_text(texts, **kw)
        else:
            with steer(model, vec, m, layers=[layer], positions="from_eoi"):
                ref[m] = model.generate_text(texts, **kw)
    sync()
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = steered_generations(model, prompts, vec, layers=[layer], multipliers=mults, style=style,
                               max_new_tokens=new_tokens, batch_size=len(prompts))
    sync()
    t = time.perf_counter() - t0
    same = sum(r["text"] == ref[r["multiplier"]][i % len(prompts)] for i, r in enumerate(rows))
    print(f"greedy steered generations, {n_prompts} prompts x 3 multipliers x {new_tokens} tokens: one generate() "
          f"per multiplier {t_ref:.2f} s, shared prefix {t:.2f} s, {t_ref / t:.2f}x ({same}/{len(rows)} texts equal)")


def bench_refusal(model, data: str, n_cands: int, n_prompts: int, batch_size: int) -> None:
    """The refusal pipeline's ``induce`` scores: each candidate added in turn vs shared prefixes."""
    from actlab.data import load_instructions
    from actlab.hooks.additions import Add
    from actlab.hooks.points import HookPoint
    from actlab.steering.apply import eoi_for
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
        with model.edit(Add({HookPoint(layer, "resid_pre"): r}, 1.0, eoi_ids=eoi_for(model, "auto"))):
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
