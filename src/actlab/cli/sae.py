"""``actlab acts cache`` and ``actlab sae train|eval|overlap|top-examples|explain|transcoder``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .common import (
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    GgufOpt,
    LimitOpt,
    MaxMemOpt,
    ModelArg,
    checks,
    console,
    distributed,
    load,
    opt,
    split_list,
    wrote,
)

acts_app = typer.Typer(help="Cache activations to disk (sharded safetensors + manifest, resumable).",
                       no_args_is_help=True, rich_markup_mode=None)
sae_app = typer.Typer(help="Train, evaluate and inspect sparse autoencoders.", no_args_is_help=True,
                      rich_markup_mode=None)
OutDir = Annotated[Path, opt("--out", metavar="DIR", help="Output folder (with run.json).")]


@acts_app.command("cache")
def cache(
    model: ModelArg,
    data: Annotated[Path, opt("--data", metavar="PATH", help="Texts: JSONL/JSON, CSV, plain text, or a saved HF "
                                                              "dataset folder.")],
    points: Annotated[list[str], opt("--points", metavar="POINTS", help="Hook points (comma-separated or "
                                                                         "repeated).")],
    out: Annotated[Path, opt("--out", metavar="DIR", help="Cache folder.")],
    field: Annotated[str | None, opt("--field", metavar="NAME", help="Text field/column [default: text, review, "
                                                                      "content...].")] = None,
    limit: LimitOpt = None,
    cache_dtype: Annotated[str, opt("--cache-dtype", metavar="DTYPE", help="float32, float16 or bfloat16.")]
    = "float32",
    max_length: Annotated[int, opt("--max-length", metavar="N", help="Truncate texts to this many tokens.")] = 256,
    shard_tokens: Annotated[int, opt("--shard-tokens", metavar="N", help="Tokens per shard file.")] = 65536,
    batch_size: Annotated[int, opt("--batch-size", metavar="N", help="Texts per forward pass.")] = 16,
    keep_bos: Annotated[bool, opt("--keep-bos/--drop-bos", help="Keep the BOS token's activations.")] = False,
    overwrite: Annotated[bool, opt("--overwrite", help="Start over instead of resuming.")] = False,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
) -> None:
    """Stream a text dataset through the model and write hook-point activations (resumable)."""
    from ..jobs import cache_acts
    from ..sae.store import DTYPES

    pts = split_list(points)
    checks.point_syntax(pts)
    checks.input_path(data, "--data")
    checks.output_dir(out, "--out folder")
    checks.choice(cache_dtype, "--cache-dtype", list(DTYPES))
    for v, what in ((limit, "--limit"), (max_length, "--max-length"), (shard_tokens, "--shard-tokens"),
                    (batch_size, "--batch-size")):
        checks.positive(v, what)
    from ..data import read_texts
    from ..jobs.common import FromFile

    texts = FromFile(read_texts(data, field=field, limit=limit), data)  # read (and checked) before the model loads
    if (out / "manifest.json").is_file():  # a damaged cache is named before the model loads
        from ..sae.store import read_manifest

        read_manifest(out / "manifest.json")
    if not overwrite:
        from ..sae.store import check_space_before_loading

        check_space_before_loading(model, gguf_file, texts, pts, out, max_length=max_length, keep_bos=keep_bos,
                                   dtype=cache_dtype)
    rank, _ = distributed(device)  # under torchrun: each process caches a block of the texts
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    man = cache_acts(m, texts, pts, out, field=field, limit=limit, dtype=cache_dtype, batch_size=batch_size,
                     shard_tokens=shard_tokens, max_length=max_length, keep_bos=keep_bos, overwrite=overwrite)
    if rank != 0:
        return
    console.print(f"wrote {out}: {man['n_tokens']} tokens x {len(man['points'])} points in {len(man['shards'])} "
                  f"shards ({cache_dtype})", highlight=False)


def _train_default(field: str) -> Any:
    from ..sae import defaults

    return getattr(defaults, field.upper())


@sae_app.command("train")
def train(
    config: Annotated[Path | None, opt("--config", "-c", metavar="FILE", help="YAML run spec (the flags below "
                                       "override it).")] = None,
    cache: Annotated[Path | None, opt("--cache", metavar="DIR", help="Activation cache folder.")] = None,
    point: Annotated[str | None, opt("--point", metavar="POINT", help="Hook point to train on, e.g. "
                                     "blocks.1.mlp_out.")] = None,
    out: Annotated[Path | None, opt("--out", metavar="DIR", help="Run folder.")] = None,
    model: Annotated[str | None, opt("--model", metavar="MODEL", help="For on-the-fly activations (with "
                                     "--data).")] = None,
    data: Annotated[Path | None, opt("--data", metavar="PATH", help="Texts for on-the-fly activations.")] = None,
    expansion: Annotated[str | None, opt("--expansion", metavar="LIST", help="Dictionary widths as multiples of "
                                         "d_in, e.g. 1,2 [default: 1].")] = None,
    l1: Annotated[str | None, opt("--l1", metavar="LIST", help="L1 coefficients, one per width or one for all "
                                  "[default: 1e-3].")] = None,
    architecture: Annotated[str | None, opt("--architecture", metavar="ARCH", help="relu or topk [default: "
                                            "relu].")] = None,
    k: Annotated[int | None, opt("--k", metavar="K", help="k for TopK.")] = None,
    aux_k_coefficient: Annotated[float | None, opt("--aux-k-coefficient", metavar="X", help="TopK: weight of the "
                                                   "auxiliary loss on dead features [default: 1/32; 0 = off].")]
    = None,
    tied: Annotated[bool | None, opt("--tied/--untied", help="Tie decoder to encoder [default: untied].")] = None,
    steps: Annotated[int | None, opt("--steps", metavar="N", help="Training steps [default: "
                                     f"{_train_default('steps')}].")] = None,
    batch_size: Annotated[int | None, opt("--batch-size", metavar="N", help="Tokens per batch [default: "
                                          f"{_train_default('batch_size')}].")] = None,
    lr: Annotated[float | None, opt("--lr", metavar="X", help=f"Learning rate [default: {_train_default('lr')}].")]
    = None,
    seed: Annotated[int | None, opt("--seed", metavar="N", help="Seed [default: 0].")] = None,
    checkpoint_every: Annotated[int | None, opt("--checkpoint-every", metavar="N", help="Steps between checkpoints "
                                                "[default: none].")] = None,
    resume: Annotated[bool, opt("--resume/--no-resume", help="Resume from the run folder's latest checkpoint.")]
    = True,
    overwrite: Annotated[bool, opt("--overwrite", help="Start over, deleting earlier checkpoints and "
                                   "dictionaries.")] = False,
    resume_anyway: Annotated[bool, opt("--resume-anyway", help="Continue a checkpoint trained with other settings "
                                       "(both are recorded).")] = False,
    device: Annotated[str | None, opt("--device", metavar="DEVICE", help="Device for the dictionaries [default: "
                                      "cpu].")] = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Train several dictionaries together on one activation stream (YAML config or flags)."""
    from ..errors import InputError
    from ..jobs import train_saes as train_job
    from ..sae.dictionary import TRAINABLE
    from ..sae.spec import DictionarySpec, load_spec

    if config is None and point is None:
        raise InputError("give --config FILE or at least --point and --cache (or --model and --data)")
    checks.input_file(config, "--config file")
    checks.input_dir(cache, "--cache folder")
    checks.input_path(data, "--data")
    checks.point_syntax(point)
    checks.output_dir(out, "--out folder")
    checks.device(device)
    for v, what in ((steps, "--steps"), (batch_size, "--batch-size"), (lr, "--lr"), (k, "--k"),
                    (checkpoint_every, "--checkpoint-every")):
        checks.positive(v, what)
    checks.non_negative(aux_k_coefficient, "--aux-k-coefficient")
    if architecture is not None:
        checks.choice(architecture, "--architecture", TRAINABLE)
    overrides: dict[str, Any] = {
        "cache": cache, "point": point, "out": out, "model": model, "data": data, "device": device,
        "train.steps": steps, "train.batch_size": batch_size, "train.lr": lr, "train.seed": seed,
        "train.checkpoint_every": checkpoint_every, "train.aux_k_coefficient": aux_k_coefficient}
    if expansion or l1 or architecture or k or tied is not None:
        widths = [checks.positive(x, "--expansion") for x in checks.numbers(expansion or "1", "--expansion")]
        l1s = [checks.non_negative(x, "--l1") for x in checks.numbers(l1 or "1e-3", "--l1")]
        if len(l1s) not in (1, len(widths)):
            raise InputError(f"--l1 gives {len(l1s)} values for {len(widths)} widths; give one or one per width")
        overrides["dictionaries"] = [DictionarySpec(expansion=w, l1_coefficient=l1s[i if len(l1s) > 1 else 0],
                                                    architecture=architecture or "relu", k=k, tied=bool(tied))
                                     for i, w in enumerate(widths)]
    spec = load_spec(config, overrides)  # the whole spec is checked (unknown keys, ranges) before anything loads
    if spec.cache is None and spec.data is not None:
        from ..data import read_texts

        checks.input_path(spec.data, "data")
        read_texts(spec.data, limit=spec.n_texts)  # a malformed text file fails before the model loads
    rank, _ = distributed(spec.device)  # under torchrun: data-parallel training
    m = (load(spec.model, None, None, device_map=device_map, max_memory=max_memory)
         if spec.cache is None and spec.model else None)
    res = train_job(spec, model=m, resume=resume, overwrite=overwrite, resume_anyway=resume_anyway)
    if rank != 0:
        return
    _print_metrics(res.metrics)
    wrote(f"{spec.out}/saes/", "sae_metrics.json", "train_log.jsonl")


def _print_metrics(metrics: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(title="dictionaries")
    cols = ["explained_variance", "mse", "l0", "dead_fraction", "dense_fraction", "loss_recovered"]
    t.add_column("dictionary")
    for c in cols:
        t.add_column(c, justify="right")
    for name, m in metrics.items():
        t.add_row(name, *[f"{m[c]:.4g}" if isinstance(m.get(c), float) else "-" for c in cols])
    console.print(t)
    for line in metric_notes(metrics):
        console.print(line, highlight=False)


def metric_notes(metrics: dict[str, dict[str, Any]]) -> list[str]:
    """What a surprising number in the table means (said in the terminal, not only in the docs)."""
    notes = []
    dense = [n for n, m in metrics.items() if isinstance(m.get("dense_fraction"), float) and m["dense_fraction"] > 0.5]
    if dense:
        notes.append(f"note: dense_fraction is the share of features active on more than 10% of tokens; "
                     f"{', '.join(dense)} are mostly dense - the sparsity penalty is too weak for this data "
                     "(raise --l1 / lower --k, or train longer)")
    above = [n for n, m in metrics.items() if isinstance(m.get("loss_recovered"), float) and m["loss_recovered"] > 1]
    if above:
        notes.append(f"note: loss_recovered = (L_zero - L_spliced) / (L_zero - L_clean); above 1 for "
                     f"{', '.join(above)} means the reconstruction gave a lower next-token loss than the model's own "
                     "activation - possible on few or out-of-domain texts (see the components in sae_metrics.json)")
    dead = [n for n, m in metrics.items() if isinstance(m.get("dead_fraction"), float) and m["dead_fraction"] > 0.5]
    if dead:
        notes.append(f"note: more than half of the features of {', '.join(dead)} never fired on the evaluation "
                     "tokens (dead): a smaller dictionary or more training data")
    return notes


@sae_app.command("eval")
def evaluate(
    saes: Annotated[list[Path], typer.Argument(help="Dictionary folders.", metavar="SAE...", show_default=False)],
    out: OutDir,
    cache: Annotated[Path | None, opt("--cache", metavar="DIR", help="Activation cache for reconstruction "
                                      "metrics.")] = None,
    model: Annotated[str | None, opt("--model", metavar="MODEL", help="Model for the downstream loss (with "
                                     "--data).")] = None,
    data: Annotated[Path | None, opt("--data", metavar="PATH", help="Texts for the downstream loss.")] = None,
    limit: Annotated[int, opt("--limit", metavar="N", help="Texts for the downstream loss.")] = 32,
    max_batches: Annotated[int, opt("--max-batches", metavar="N", help="Cache batches to evaluate on.")] = 16,
    batch_size: Annotated[int, opt("--batch-size", metavar="N", help="Tokens per cache batch.")] = 4096,
    max_length: Annotated[int, opt("--max-length", metavar="N", help="Tokens per text for the downstream loss.")]
    = 128,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Reconstruction metrics (MSE, explained variance, L0, dead/dense) and downstream loss recovered."""
    from ..errors import InputError
    from ..jobs import evaluate_saes

    if cache is None and (model is None or data is None):
        raise InputError("give --cache and/or --model with --data")
    for s in saes:
        checks.input_dir(s, "dictionary folder")
    checks.output_dir(out, "--out folder")
    checks.input_dir(cache, "--cache folder")
    checks.input_path(data, "--data")
    for v, what in ((limit, "--limit"), (max_batches, "--max-batches"), (batch_size, "--batch-size"),
                    (max_length, "--max-length")):
        checks.positive(v, what)
    from ..sae import load_sae

    for s in saes:  # each dictionary read and checked (shapes, NaN weights, input scale) before the model loads
        load_sae(s)
    m = load(model, dtype, device, device_map=device_map, max_memory=max_memory) if model else None
    metrics = evaluate_saes(saes, out, cache=cache, model=m, data=data, n_texts=limit, max_batches=max_batches,
                            batch_size=batch_size, max_length=max_length)
    _print_metrics(metrics)
    wrote(out / "sae_eval.json")


@sae_app.command("overlap")
def overlap_cmd(
    a: Annotated[Path, typer.Argument(help="First dictionary folder.", metavar="SAE_A", show_default=False)],
    b: Annotated[Path, typer.Argument(help="Second dictionary folder.", metavar="SAE_B", show_default=False)],
    out: OutDir,
    top_k: Annotated[int, opt("--top-k", metavar="K", help="Most similar pairs to list.")] = 20,
    hungarian: Annotated[bool, opt("--hungarian/--no-hungarian", help="Also the Hungarian-matched mean cosine.")]
    = True,
) -> None:
    """Mean max cosine (greedy and Hungarian) between two dictionaries' decoder directions."""
    from ..jobs import sae_overlap

    checks.input_dir(a, "dictionary folder")
    checks.input_dir(b, "dictionary folder")
    checks.output_dir(out, "--out folder")
    checks.positive(top_k, "--top-k")
    res = sae_overlap(a, b, out, top_k=top_k, hungarian=hungarian)
    console.print(f"mean max cos A->B {res['mean_max_cos_a_to_b']:.4f}, B->A {res['mean_max_cos_b_to_a']:.4f}"
                  + (f", Hungarian {res['hungarian_mean_cos']:.4f}" if "hungarian_mean_cos" in res else ""),
                  highlight=False)
    wrote(out / "overlap.json")


@sae_app.command("top-examples")
def top_examples_cmd(
    model: ModelArg,
    sae: Annotated[Path, typer.Argument(help="Dictionary folder.", metavar="SAE", show_default=False)],
    data: Annotated[Path, opt("--data", metavar="PATH", help="Texts to search.")],
    out: OutDir,
    features: Annotated[str | None, opt("--features", metavar="LIST", help="Features, e.g. 0,5,9 [default: the "
                                        "most active].")] = None,
    top_k: Annotated[int, opt("--top-k", metavar="K", help="How many features when --features is not given.")]
    = 16,
    contexts: Annotated[int, opt("--contexts", metavar="N", help="Contexts per feature.")] = 8,
    limit: Annotated[int, opt("--limit", metavar="N", help="Texts to read.")] = 200,
    max_length: Annotated[int, opt("--max-length", metavar="N", help="Tokens per text.")] = 128,
    rank_by: Annotated[str, opt("--rank-by", metavar="WHAT", help="Which features when --features is not given: "
                                "max (largest activation) or density.")] = "max",
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Feature dashboards: top contexts with every token shaded, activation histogram, promoted and suppressed
    tokens, density; JSON, an offline page with search and sort, and a Neuronpedia-style export."""
    from ..data import read_texts
    from ..errors import InputError
    from ..jobs import top_examples
    from ..sae import load_sae

    checks.input_dir(sae, "dictionary folder")
    checks.input_path(data, "--data")
    checks.output_dir(out, "--out folder")
    for v, what in ((top_k, "--top-k"), (contexts, "--contexts"), (limit, "--limit"), (max_length, "--max-length")):
        checks.positive(v, what)
    checks.choice(rank_by, "--rank-by", ["max", "density"])
    feats = checks.integers(features, "--features") if features else None
    dictionary = load_sae(sae)  # read and checked before the model loads
    bad = [f for f in feats or [] if not 0 <= f < dictionary.cfg.d_sae]
    if bad:
        raise InputError(f"--features {bad[0]} does not exist; {str(sae)!r} has features 0..{dictionary.cfg.d_sae - 1}")
    texts = read_texts(data, limit=limit)
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    dash = top_examples(dictionary, m, texts, out, features=feats, top_k_features=top_k, contexts=contexts, limit=limit,
                        max_length=max_length, rank_by=rank_by)
    wrote(out / "top_examples.json", f"top_examples.html, neuronpedia.json ({len(dash['features'])} features)")


@sae_app.command("explain")
def explain_cmd(
    model: ModelArg,
    sae: Annotated[Path, typer.Argument(help="Dictionary folder.", metavar="SAE", show_default=False)],
    data: Annotated[Path, opt("--data", metavar="PATH", help="Texts the contexts come from.")],
    out: OutDir,
    scorer_url: Annotated[str | None, opt("--scorer-url", metavar="URL", help="OpenAI-compatible endpoint of the "
                                          "scorer, e.g. http://127.0.0.1:8000/v1 [default: --explainer-url].")] = None,
    scorer_model: Annotated[str | None, opt("--scorer-model", metavar="NAME", help="Scorer model name [default: "
                                            "--explainer-model].")] = None,
    explainer_url: Annotated[str | None, opt("--explainer-url", metavar="URL", help="Endpoint of the explainer.")]
    = None,
    explainer_model: Annotated[str | None, opt("--explainer-model", metavar="NAME", help="Explainer model name.")]
    = None,
    explainer_local: Annotated[str | None, opt("--explainer-local", metavar="MODEL", help="A local HF chat model "
                                               "as the explainer instead of an endpoint (hub id, folder or GGUF; "
                                               "e.g. HuggingFaceTB/SmolLM2-135M-Instruct).")] = None,
    explanations: Annotated[Path | None, opt("--explanations", metavar="FILE", help="Score these instead of "
                                             "asking an explainer: JSON {latent: explanation}.")] = None,
    features: Annotated[str | None, opt("--features", metavar="LIST", help="Latents, e.g. 0,5,9 [default: the "
                                        "--top-k most often active].")] = None,
    top_k: Annotated[int, opt("--top-k", metavar="K", help="How many latents when --features is not given.")] = 8,
    limit: Annotated[int, opt("--limit", metavar="N", help="Texts to read.")] = 200,
    max_length: Annotated[int, opt("--max-length", metavar="N", help="Tokens per text.")] = 64,
    per_request: Annotated[int, opt("--per-request", metavar="N", help="Contexts scored per request.")] = 5,
    concurrency: Annotated[int, opt("--concurrency", metavar="N", help="Requests in flight.")] = 8,
    retries: Annotated[int, opt("--retries", metavar="N", help="Retries of a failed request (429, 5xx, "
                                "unreachable).")] = 3,
    logprobs: Annotated[int, opt("--logprobs", metavar="K", help="Ask the scorer for its top K log-probabilities "
                                 "per token: an AUC per score and the expected-value simulator (0: off; the "
                                 "server must support logprobs, else the AUCs are n/a).")] = 0,
    simulate: Annotated[bool, opt("--simulate", help="Also score by simulation (Bills et al. 2023): the scorer "
                                  "predicts each token's activation; Pearson correlation with the true ones.")]
    = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Explain latents with an LLM (or score given explanations) and score each explanation by detection and
    fuzzing (and simulation with --simulate): explanations.json with balanced accuracy, F1 and, with
    --logprobs, AUC per latent. Replies are cached in the folder."""
    import json

    from ..errors import InputError
    from ..jobs.common import FromFile, as_texts
    from ..jobs.explain import explain_features
    from ..sae import load_sae

    checks.input_dir(sae, "dictionary folder")
    checks.input_path(data, "--data")
    checks.output_dir(out, "--out folder")
    for v, what in ((top_k, "--top-k"), (limit, "--limit"), (max_length, "--max-length"),
                    (per_request, "--per-request"), (concurrency, "--concurrency")):
        checks.positive(v, what)
    if retries < 0:
        raise InputError(f"--retries must be 0 or more, got {retries}")
    if not 0 <= logprobs <= 20:
        raise InputError(f"--logprobs must be 0 (off) to 20 (the OpenAI API's limit), got {logprobs}")
    given = None
    if explanations is not None:
        checks.input_path(explanations, "--explanations")
        try:
            raw = json.loads(explanations.read_text(encoding="utf-8"))
            given = {int(k): str(v) for k, v in raw.items()}
        except (ValueError, AttributeError, UnicodeDecodeError) as e:
            raise InputError(f"--explanations {str(explanations)!r}: give a JSON object {{latent: explanation}} "
                             f"({type(e).__name__})") from None
    elif not (explainer_url and explainer_model) and explainer_local is None:
        raise InputError("give --explainer-url and --explainer-model (or --explainer-local MODEL), or "
                         "--explanations FILE")
    if explainer_local is not None and explainer_url:
        raise InputError("give --explainer-local or --explainer-url, not both")
    scorer_url, scorer_model = scorer_url or explainer_url, scorer_model or explainer_model
    if not (scorer_url and scorer_model):
        raise InputError("give --scorer-url and --scorer-model (they default to the explainer's)")
    feats = checks.integers(features, "--features") if features else None
    unexplained = sorted(set(feats or []) - set(given or {})) if given is not None else []
    if unexplained and not (explainer_url and explainer_model) and explainer_local is None:
        raise InputError(f"--features {unexplained[0]} has no explanation in {str(explanations)!r} and no explainer "
                         "is given (--explainer-url, --explainer-model)")
    dictionary = load_sae(sae)
    bad = [f for f in (feats or []) + sorted(given or {}) if not 0 <= f < dictionary.cfg.d_sae]
    if bad:
        raise InputError(f"latent {bad[0]} does not exist; {str(sae)!r} has latents 0..{dictionary.cfg.d_sae - 1}")
    texts = FromFile(as_texts(data, limit=limit), data)
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    res = explain_features(dictionary, m, texts, out, scorer_url=scorer_url, scorer_model=scorer_model,
                           explainer_url=explainer_url, explainer_model=explainer_model,
                           explainer_local=load(explainer_local, dtype, device, None) if explainer_local else None,
                           explanations=given,
                           features=feats, top_k=top_k, limit=limit, max_length=max_length, per_request=per_request,
                           concurrency=concurrency, retries=retries, logprobs=logprobs, simulate=simulate)
    s = res["summary"]
    console.print(f"{s['scored']} latents scored: detection {_fmt(s['detection_balanced_accuracy'])}, fuzzing "
                  f"{_fmt(s['fuzzing_balanced_accuracy'])} balanced accuracy (mean); {s['failed_replies']} replies "
                  f"unparsed (counted as wrong)", highlight=False)
    if logprobs:
        console.print(f"AUC (mean): detection {_fmt(s['detection_auc'])}, fuzzing {_fmt(s['fuzzing_auc'])}"
                      + ("" if s["detection_auc"] is not None else " - the scorer returned no log-probabilities"),
                      highlight=False)
    if simulate:
        console.print(f"simulation: correlation {_fmt(s['simulation_correlation'])} (mean; 1 = the explanation "
                      "predicts the activations exactly, 0 = not at all)", highlight=False)
    wrote(out / "explanations.json", "llm_cache/")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


@sae_app.command("transcoder")
def transcoder_cmd(
    model: ModelArg,
    data: Annotated[Path, opt("--data", metavar="PATH", help="Texts to train on (a tenth held out).")],
    layer: Annotated[int, opt("--layer", metavar="N", help="The layer whose MLP the transcoder replaces.")],
    out: OutDir,
    limit: LimitOpt = 400,
    max_length: Annotated[int, opt("--max-length", metavar="N", help="Tokens per text.")] = 128,
    expansion: Annotated[int, opt("--expansion", metavar="N", help="Latents per model dimension.")] = 8,
    k: Annotated[int, opt("--k", metavar="K", help="Active latents per token (TopK).")] = 32,
    no_skip: Annotated[bool, opt("--no-skip", help="No linear skip connection (a plain transcoder).")] = False,
    steps: Annotated[int, opt("--steps", metavar="N", help="Training steps.")] = 2000,
    batch_size: Annotated[int, opt("--batch-size", metavar="N", help="Tokens per step.")] = 1024,
    lr: Annotated[float, opt("--lr", metavar="X", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, opt("--seed", metavar="N", help="Initialisation and batch order.")] = 0,
    checkpoint_every: Annotated[int | None, opt("--checkpoint-every", metavar="N", help="Checkpoint every N "
                                                "steps (resume after an interruption).")] = None,
    overwrite: Annotated[bool, opt("--overwrite", help="Start the folder over.")] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    gguf_file: GgufOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Train a skip transcoder from blocks.N.resid_mid to blocks.N.mlp_out and measure it as a replacement on
    held-out texts: explained variance of the MLP output, next-token KL with and without the error term.
    Resumable; data-parallel under torchrun."""
    from ..errors import InputError
    from ..jobs.common import FromFile, as_texts
    from ..jobs.transcoder import train_transcoder

    checks.input_path(data, "--data")
    checks.output_dir(out, "--out folder")
    for v, what in ((expansion, "--expansion"), (k, "--k"), (steps, "--steps"), (batch_size, "--batch-size"),
                    (max_length, "--max-length")):
        checks.positive(v, what)
    if layer < 0:
        raise InputError(f"--layer must be 0 or more, got {layer}")
    if not lr > 0:
        raise InputError(f"--lr must be positive, got {lr}")
    texts = FromFile(as_texts(data, limit=limit), data)
    rank, _ = distributed(device)
    m = load(model, dtype, device, gguf_file, device_map=device_map, max_memory=max_memory)
    res = train_transcoder(m, texts, out, layer=layer, limit=limit, max_length=max_length, expansion=expansion, k=k,
                           skip=not no_skip, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                           checkpoint_every=checkpoint_every, overwrite=overwrite)
    if rank != 0:
        return
    console.print(f"held out: explained variance {res['explained_variance']:.3f} of {res['points'][1]}; next-token "
                  f"KL {res['kl_replaced']:.4f} nats replaced, {res['kl_with_error_term']:.2e} with the error term; "
                  f"loss {res['loss_original']:.3f} -> {res['loss_replaced']:.3f}", highlight=False)
    wrote(out / "transcoder.json", "transcoders/")
