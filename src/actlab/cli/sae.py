"""``actlab acts cache`` and ``actlab sae train|eval|overlap|top-examples``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .common import DeviceOpt, DtypeOpt, GgufOpt, ModelArg, console, load, progress_bar, split_list

acts_app = typer.Typer(help="Cache activations to disk (sharded safetensors + manifest).", no_args_is_help=True)
sae_app = typer.Typer(help="Train, evaluate and inspect sparse autoencoders.", no_args_is_help=True)


@acts_app.command("cache")
def cache(
    model: ModelArg,
    data: Annotated[Path, typer.Option(help="Texts: JSONL/JSON, CSV, plain text, or a saved HF dataset folder.")],
    points: Annotated[list[str], typer.Option("--points", help="Hook points (comma-separated or repeated).")],
    out: Annotated[Path, typer.Option(help="Cache folder.")],
    field: Annotated[str | None, typer.Option(help="Text field/column (default: text, review, ...).")] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most this many texts.")] = None,
    cache_dtype: Annotated[str, typer.Option("--cache-dtype", help="float32, float16 or bfloat16.")] = "float32",
    max_length: Annotated[int, typer.Option(help="Truncate texts to this many tokens.")] = 256,
    shard_tokens: Annotated[int, typer.Option(help="Tokens per shard file.")] = 65536,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 16,
    keep_bos: Annotated[bool, typer.Option(help="Keep the BOS token's activations.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over instead of resuming.")] = False,
    device_map: Annotated[str | None, typer.Option(help="'auto' spreads a large model over the GPUs "
                                                        "(accelerate).")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Stream a text dataset through the model and write hook-point activations (resumable)."""
    from ..jobs import cache_acts

    m = load(model, dtype, device, gguf_file, **({"device_map": device_map} if device_map else {}))
    with progress_bar("caching texts", limit) as advance:
        man = cache_acts(m, data, split_list(points), out, field=field, limit=limit, dtype=cache_dtype,
                         batch_size=batch_size, shard_tokens=shard_tokens, max_length=max_length, keep_bos=keep_bos,
                         overwrite=overwrite, progress=advance)
    console.print(f"wrote {out}: {man['n_tokens']} tokens x {len(man['points'])} points in {len(man['shards'])} "
                  f"shards ({cache_dtype})")


@sae_app.command("train")
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run spec (flags override it).")] = None,
    cache: Annotated[Path | None, typer.Option(help="Activation cache folder.")] = None,
    point: Annotated[str | None, typer.Option(help="Hook point to train on.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    model: Annotated[str | None, typer.Option(help="For on-the-fly activations (with --data).")] = None,
    data: Annotated[Path | None, typer.Option(help="Texts for on-the-fly activations.")] = None,
    expansion: Annotated[str | None, typer.Option(help="Dictionary widths as multiples of d_in, e.g. 1,2.")] = None,
    l1: Annotated[str | None, typer.Option(help="L1 coefficients, e.g. 1e-3 (one per width or one for all).")]
    = None,
    architecture: Annotated[str | None, typer.Option(help="relu or topk.")] = None,
    k: Annotated[int | None, typer.Option(help="k for TopK.")] = None,
    aux_k_coefficient: Annotated[float | None, typer.Option(
        help="TopK: weight of the auxiliary loss that trains dead features (default 1/32; 0 = off).")] = None,
    tied: Annotated[bool | None, typer.Option("--tied/--untied", help="Tie decoder to encoder.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Tokens per batch.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the run folder's latest checkpoint.")] = True,
    device: Annotated[str | None, typer.Option(help="Device for the dictionaries.")] = None,
) -> None:
    """Train several dictionaries together on one activation stream (YAML config or flags)."""
    from ..errors import InputError
    from ..jobs import train_saes as train_job
    from ..sae.spec import DictionarySpec, load_spec
    from ..sae.train import rank_and_world

    overrides = {"cache": cache, "point": point, "out": out, "model": model, "data": data, "device": device,
                 "train.steps": steps, "train.batch_size": batch_size, "train.lr": lr, "train.seed": seed,
                 "train.checkpoint_every": checkpoint_every, "train.aux_k_coefficient": aux_k_coefficient}
    if expansion or l1 or architecture or k or tied is not None:
        widths = [float(x) for x in (expansion or "1").split(",")]
        l1s = [float(x) for x in (l1 or "1e-3").split(",")]
        if len(l1s) not in (1, len(widths)):
            raise InputError(f"--l1 gives {len(l1s)} values for {len(widths)} widths; give one or one per width")
        overrides["dictionaries"] = [DictionarySpec(expansion=w, l1_coefficient=l1s[i if len(l1s) > 1 else 0],
                                                    architecture=architecture or "relu", k=k, tied=bool(tied))
                                     for i, w in enumerate(widths)]
    if config is None and point is None:
        raise InputError("give --config FILE or at least --point and --cache (or --model and --data)")
    spec = load_spec(config, overrides)
    rank, _ = rank_and_world()
    m = load(spec.model, None, None) if spec.cache is None and spec.model else None
    first = spec.dictionaries[0].name or None
    with progress_bar("training", spec.train.steps) as advance:
        def on_step(row: dict) -> None:
            c = first or next(k for k, v in row.items() if isinstance(v, dict))
            advance(1, description=f"training: {c} loss {row[c]['loss']:.4g} L0 {row[c]['l0']:.1f} "
                                   f"dead {row[c]['dead']:.2f}")

        res = train_job(spec, model=m, resume=resume, progress=on_step if rank == 0 else None)
    if rank != 0:
        return
    _print_metrics(res.metrics)
    console.print(f"wrote {spec.out}/saes/, sae_metrics.json, train_log.jsonl")


def _print_metrics(metrics) -> None:
    t = Table(title="dictionaries")
    cols = ["explained_variance", "mse", "l0", "dead_fraction", "dense_fraction", "loss_recovered"]
    t.add_column("dictionary")
    for c in cols:
        t.add_column(c, justify="right")
    for name, m in metrics.items():
        t.add_row(name, *[f"{m[c]:.4g}" if isinstance(m.get(c), float) else "-" for c in cols])
    console.print(t)


@sae_app.command("eval")
def evaluate(
    saes: Annotated[list[Path], typer.Argument(help="Dictionary folders.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    cache: Annotated[Path | None, typer.Option(help="Activation cache for reconstruction metrics.")] = None,
    model: Annotated[str | None, typer.Option(help="Model for the downstream loss (with --data).")] = None,
    data: Annotated[Path | None, typer.Option(help="Texts for the downstream loss.")] = None,
    n_texts: Annotated[int, typer.Option(help="Texts for the downstream loss.")] = 32,
    max_batches: Annotated[int, typer.Option(help="Cache batches to evaluate on.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Tokens per cache batch.")] = 4096,
    max_length: Annotated[int, typer.Option(help="Tokens per text for the downstream loss.")] = 128,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Reconstruction metrics (MSE, explained variance, L0, dead/dense) and downstream loss recovered."""
    from ..errors import InputError
    from ..jobs import evaluate_saes

    if cache is None and (model is None or data is None):
        raise InputError("give --cache and/or --model with --data")
    m = load(model, dtype, device) if model else None
    metrics = evaluate_saes(saes, out, cache=cache, model=m, data=data, n_texts=n_texts, max_batches=max_batches,
                            batch_size=batch_size, max_length=max_length)
    _print_metrics(metrics)
    console.print(f"wrote {out}/sae_eval.json")


@sae_app.command("overlap")
def overlap_cmd(
    a: Annotated[Path, typer.Argument(help="First dictionary folder.")],
    b: Annotated[Path, typer.Argument(help="Second dictionary folder.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    top: Annotated[int, typer.Option(help="Most similar pairs to list.")] = 20,
    hungarian: Annotated[bool, typer.Option(help="Also the Hungarian-matched mean cosine.")] = True,
) -> None:
    """Mean max cosine (greedy and Hungarian) between two dictionaries' decoder directions."""
    from ..jobs import sae_overlap

    res = sae_overlap(a, b, out, top_k=top, hungarian=hungarian)
    console.print(f"mean max cos A->B {res['mean_max_cos_a_to_b']:.4f}, B->A {res['mean_max_cos_b_to_a']:.4f}"
                  + (f", Hungarian {res['hungarian_mean_cos']:.4f}" if "hungarian_mean_cos" in res else ""))
    console.print(f"wrote {out}/overlap.json")


@sae_app.command("top-examples")
def top_examples_cmd(
    sae: Annotated[Path, typer.Argument(help="Dictionary folder.")],
    model: ModelArg,
    data: Annotated[Path, typer.Option(help="Texts to search.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    features: Annotated[str | None, typer.Option(help="Features, e.g. 0,5,9 (default: the most active).")] = None,
    n_features: Annotated[int, typer.Option(help="How many features when --features is not given.")] = 16,
    k: Annotated[int, typer.Option(help="Contexts per feature.")] = 8,
    limit: Annotated[int, typer.Option(help="Texts to read.")] = 200,
    max_length: Annotated[int, typer.Option(help="Tokens per text.")] = 128,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Top-activating contexts per feature, as JSON and an offline HTML page with the tokens highlighted."""
    from ..jobs import top_examples

    feats = [int(x) for x in features.split(",")] if features else None
    m = load(model, dtype, device, gguf_file)
    ex = top_examples(sae, m, data, out, features=feats, top_k_features=n_features, contexts=k, limit=limit,
                      max_length=max_length)
    console.print(f"wrote {out}/top_examples.json and top_examples.html ({len(ex)} features)")
