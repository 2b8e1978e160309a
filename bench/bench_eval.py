"""The evaluation harness's two hot paths against their baselines, timed in one interleaved run.

1. A/B grid: the harness's pass (``actlab.eval.grid.ab_pass``: both letter orders, tokenizing, boundaries, the
   reduction to two answers, every cell of every method as rows over one shared prefix) against the sweep
   engine alone (``iter_cell_logits`` on the same pre-tokenized rows and cells, nothing else).
   Target: >= 0.9 of the engine's cells x questions per second. Methods: mean_diff, pca, logreg (multipliers)
   and rotation (angles), 3 layers x 5 strengths each.
2. Open-ended generation: every cell as rows of shared generate() calls (``cell_generations``) against one
   ``generate()`` per cell (``steer`` + ``generate_text``, the prompts batched). Target: >= 3x. The texts are
   compared (greedy: they should be equal).

    ACTLAB_DATA_DIR=../shared/data python bench/bench_eval.py                       # SmolLM2, CPU
    ACTLAB_DATA_DIR=... python bench/bench_eval.py --behaviours 7 --items 50 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from actlab.eval.behaviours import CAA_DESCRIPTIONS, both_orders
from common import machine, sync


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    ap.add_argument("--behaviours", type=int, default=2, help="CAA behaviours (the issue's scale is 7)")
    ap.add_argument("--items", type=int, default=12, help="A/B items per behaviour (both letter orders: x2 rows)")
    ap.add_argument("--layers", default="8,12,16")
    ap.add_argument("--gen-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--cells-per-batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    data = os.environ.get("ACTLAB_DATA_DIR")
    if not data:
        print("eval benchmark skipped: ACTLAB_DATA_DIR is not set (it needs the CAA questions)")
        return
    import actlab
    from actlab.eval.behaviours import load_behaviour
    from actlab.eval.config import EvalConfig
    from actlab.eval.context import Context
    from actlab.eval.grid import ab_pass, distinct_edits
    from actlab.eval.methods import METHODS
    from actlab.steering import steer
    from actlab.steering.evaluate import ab_prompts
    from actlab.steering.prefix import CellEdits, boundaries, cell_generations, iter_cell_logits
    from actlab.steering.prompts import format_prompt

    model = actlab.load_model(args.model, dtype=args.dtype, device=args.device)
    names = list(CAA_DESCRIPTIONS)[:args.behaviours]
    cfg = EvalConfig.model_validate({
        "model": args.model, "out": "/tmp/actlab-bench-eval", "data_dir": data,
        "behaviours": [{"name": n, "source": "caa"} for n in names], "methods": ["mean_diff", "pca", "logreg",
                                                                                  "rotation"],
        "grid": {"layers": args.layers, "multipliers": [-2.0, -1.0, 0.5, 1.0, 2.0],
                 "angles": [30.0, 60.0, 90.0, 135.0, 180.0]},
        "extraction_limit": 16, "ab_limit": args.items, "batch_size": args.batch_size,
        "cells_per_batch": args.cells_per_batch})
    layers = [int(x) for x in args.layers.split(",")]
    print(f"# eval benchmark {time.strftime('%Y-%m-%d')} - {machine()}")
    print(f"model {model.name}: {model.n_layers} layers, {model.dtype}, {model.device}; {len(names)} behaviours x "
          f"4 methods x {len(layers)} layers x 5 strengths; {args.items} items per behaviour in both orders")
    ctx = Context(cfg, model, cfg.out, None, layers)
    setups = []
    for spec in cfg.behaviours:
        beh = load_behaviour(spec, cfg)
        cells = [c for name in cfg.methods for c in METHODS[name]().cells(ctx, beh, layers)]
        items = beh.validation + beh.test
        style = ctx.style(beh, "plain")
        rows, _, _ = both_orders(items)
        prompts = ab_prompts(model, rows, style)
        ids = [p.ids for p in prompts]
        setups.append((beh, cells, items, style, ids, boundaries(model, ids, cfg.grid.positions),
                       distinct_edits(cells)[0], prompts))
    n_rc = sum(len(s[4]) * len(s[6]) for s in setups)

    def engine() -> None:
        for _, _, _, _, ids, starts, edits, prompts in setups:
            match = torch.tensor([p.match_id for p in prompts])
            other = torch.tensor([p.other_id for p in prompts])

            def two(logits: torch.Tensor, sl: slice, match=match, other=other) -> torch.Tensor:
                lp = torch.log_softmax(logits.double(), -1)
                a = lp.gather(-1, match[sl].to(lp.device)[:, None, None].expand(-1, lp.shape[1], 1))[..., 0]
                b = lp.gather(-1, other[sl].to(lp.device)[:, None, None].expand(-1, lp.shape[1], 1))[..., 0]
                return (a - b).float().cpu()
            for _ in iter_cell_logits(model, ids, starts, edits, batch_size=cfg.batch_size,
                                      cells_per_batch=cfg.cells_per_batch, reduce=two):
                pass

    def harness() -> None:
        for _beh, cells, items, style, *_ in setups:
            ab_pass(ctx, items, style, cells, "bench")

    times: dict[str, list[float]] = {"engine": [], "harness": []}
    for _ in range(args.repeats):
        for name, fn in (("engine", engine), ("harness", harness)):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    te, th = min(times["engine"]), min(times["harness"])
    print(f"A/B grid, sweep engine alone   {te:8.2f} s  {n_rc / te:8.1f} row-cells/s  1.00")
    print(f"A/B grid, eval harness         {th:8.2f} s  {n_rc / th:8.1f} row-cells/s  {te / th:.2f} of the engine "
          "(target >= 0.9)")

    # -- open-ended generation ------------------------------------------------------------------------------
    beh, cells, *_ = setups[0]
    vec = ctx.vector(beh, "mean_diff")
    prompts = beh.test_open[:args.gen_prompts] or [it.question for it in beh.test[:args.gen_prompts]]
    style = ctx.style(beh, "plain")
    texts = [format_prompt(model, p, style) for p in prompts]
    add = [c for c in cells if c.method == "mean_diff"]
    grid = [CellEdits(add=c.edits.add) for c in add]

    def shared() -> list[list[str]]:
        got = cell_generations(model, texts, grid, add_special_tokens=style.add_special_tokens(),
                               positions="from_eoi", max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                               cells_per_batch=len(grid))
        assert got is not None
        return got

    def per_cell() -> list[list[str]]:
        outs = []
        for c in add:
            with steer(model, vec, float(c.strength), layers=[c.layer], positions="from_eoi"):
                outs.append(model.generate_text(texts, max_new_tokens=args.max_new_tokens, do_sample=False,
                                                add_special_tokens=style.add_special_tokens()))
        return [[outs[j][i] for j in range(len(add))] for i in range(len(texts))]

    gt: dict[str, list[float]] = {"per cell": [], "shared": []}
    res = {}
    for _ in range(args.repeats):
        for name, fn in (("per cell", per_cell), ("shared", shared)):
            sync()
            t0 = time.perf_counter()
            res[name] = fn()
            sync()
            gt[name].append(time.perf_counter() - t0)
    tp, ts = min(gt["per cell"]), min(gt["shared"])
    same = sum(a == b for ra, rb in zip(res["per cell"], res["shared"], strict=True) for a, b in zip(ra, rb,
                                                                                                    strict=True))
    print(f"open-ended, one generate() per cell  {tp:8.2f} s  1.00x  ({len(texts)} prompts x {len(add)} cells, "
          f"{args.max_new_tokens} new tokens)")
    print(f"open-ended, cells as rows            {ts:8.2f} s  {tp / ts:.2f}x (target >= 3x); identical texts "
          f"{same}/{len(texts) * len(add)}")


if __name__ == "__main__":
    main()
