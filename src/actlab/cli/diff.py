"""``actlab diff crosscoder``: what did fine-tuning change?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import (
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    LimitOpt,
    MaxMemOpt,
    checks,
    console,
    distributed,
    load,
    opt,
    wrote,
)

diff_app = typer.Typer(help="Model diffing: what fine-tuning added, removed or changed (crosscoders).",
                       no_args_is_help=True, rich_markup_mode=None)


@diff_app.command("crosscoder")
def crosscoder_cmd(
    base: Annotated[str, typer.Argument(help="The base model (hub id, folder, GGUF, short name).", metavar="BASE",
                                        show_default=False)],
    tuned: Annotated[str, typer.Argument(help="The fine-tuned model (same tokenizer).", metavar="TUNED",
                                         show_default=False)],
    data: Annotated[Path, opt("--data", metavar="PATH", help="Texts both models read (file or saved dataset).")],
    out: Annotated[Path, opt("--out", metavar="DIR", help="Run folder (caches, crosscoder/, latents.json, "
                                                          "figures, feature pages).")],
    point: Annotated[str | None, opt("--point", metavar="POINT", help="Hook point read in both models "
                                     "[default: the middle layer's resid_post].")] = None,
    tuned_point: Annotated[str | None, opt("--tuned-point", metavar="POINT", help="Another hook point for the "
                                           "tuned model (e.g. a model of another depth).")] = None,
    limit: LimitOpt = 400,
    max_length: Annotated[int, opt("--max-length", metavar="N", help="Tokens per text.")] = 128,
    architecture: Annotated[str, opt("--architecture", metavar="NAME", help="batchtopk (Minder et al.'s "
                                     "recommendation) or l1 (the original recipe).")] = "batchtopk",
    expansion: Annotated[int, opt("--expansion", metavar="N", help="Latents per input dimension.")] = 8,
    k: Annotated[int, opt("--k", metavar="K", help="BatchTopK: latents per token on average.")] = 32,
    l1: Annotated[float, opt("--l1", metavar="X", help="L1: coefficient of the decoder-norm-weighted "
                             "penalty.")] = 1.0,
    steps: Annotated[int, opt("--steps", metavar="N", help="Training steps.")] = 2000,
    batch_size: Annotated[int, opt("--batch-size", metavar="N", help="Tokens per step.")] = 1024,
    lr: Annotated[float, opt("--lr", metavar="X", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, opt("--seed", metavar="N", help="Initialisation and batch order.")] = 0,
    checkpoint_every: Annotated[int | None, opt("--checkpoint-every", metavar="N", help="Checkpoint every N "
                                                "steps (resume after an interruption).")] = None,
    dashboards: Annotated[int, opt("--dashboards", metavar="N", help="Feature pages for the N latents leaning "
                                   "furthest to each model, past the shared band (0: none).")] = 8,
    overwrite: Annotated[bool, opt("--overwrite", help="Start the folder over.")] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemOpt = None,
) -> None:
    """Cache both models' activations of the same tokens, train a crosscoder, classify its latents (base-only,
    tuned-only, shared) with latent scaling, and write figures and feature pages. Resumable; data-parallel under
    torchrun."""
    from ..errors import InputError
    from ..jobs.common import FromFile, as_texts
    from ..jobs.diffing import crosscoder

    checks.input_path(data, "--data")
    checks.output_dir(out, "--out folder")
    checks.choice(architecture, "--architecture", ["batchtopk", "l1"])
    for value, name in ((expansion, "--expansion"), (k, "--k"), (steps, "--steps"), (batch_size, "--batch-size"),
                        (max_length, "--max-length")):
        checks.positive(value, name)
    if not lr > 0 or not l1 > 0:
        raise InputError(f"--lr and --l1 must be positive, got {lr} and {l1}")
    if dashboards < 0:
        raise InputError(f"--dashboards must be 0 or more, got {dashboards}")
    texts = FromFile(as_texts(data, limit=limit), data)  # read before the models load
    rank, _ = distributed(device)
    mb = load(base, dtype, device, device_map=device_map, max_memory=max_memory)
    mt = load(tuned, dtype, device, device_map=device_map, max_memory=max_memory)
    summary = crosscoder(mb, mt, texts, out, point=point, tuned_point=tuned_point, limit=limit,
                         max_length=max_length, architecture=architecture, expansion=expansion, k=k, l1=l1,
                         steps=steps, batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                         dashboards=dashboards, overwrite=overwrite)
    if rank != 0:
        return
    c = summary["classes"]
    console.print(f"{summary['d_sae']} latents: {c['tuned-only']} tuned-only, {c['base-only']} base-only, "
                  f"{c['shared']} shared, {c['other']} in between, {c['dead']} dead; explained variance "
                  f"{summary['explained_variance'][0]:.3f} (base), {summary['explained_variance'][1]:.3f} (tuned)",
                  highlight=False)
    wrote(out / "latents.json", "crosscoder_norms.png", "crosscoder/")
