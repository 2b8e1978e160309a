"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the Tuned Lens"):
one affine translator per layer, trained so that decoding the translated residual stream through the model's
own final norm and unembedding matches the model's final next-token distribution (KL to the final layer).

Translator ``i`` reads ``blocks.i.resid_pre`` (the residual entering layer ``i``; layer 0's is the embedding),
as in the ``tuned-lens`` package, and is added residually, ``h + A_i h + b_i`` with ``A_i = 0``, ``b_i = 0``
at the start: an untrained tuned lens *is* the logit lens, and weight decay pulls towards it.
``blocks.i.resid_post`` is ``blocks.{i+1}.resid_pre``; the last layer's output needs no translator.

Files: ``params.safetensors`` (``{i}.weight``, ``{i}.bias``) + ``config.json``. A released ``tuned-lens``
checkpoint (``params.pt`` + ``config.json``, same keys) loads through ``torch.load(weights_only=True)``, which
reads tensors and refuses to run code from the pickle.

Training: loss = KL(final || lens) per layer, averaged over tokens, translators identity-initialised, the
learning rate decayed linearly to 0, weight decay 1e-3, 250 steps - as in the paper - but AdamW (lr 1e-3) by
default instead of the paper's SGD with Nesterov momentum (lr 1.0, available as ``optimizer="sgd"``). Measured
here on SmolLM2-135M (2 x 32-token batches): SGD diverged on the first step at lr 0.3 and at 0.05 (mean KL
16.9 -> 286 and 266, still 226 and 72 on held-out text after 6 steps) while AdamW went from 16.5 (logit lens)
to 9.3 in 6 steps; the paper's SGD goes with 2^18 tokens per step.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .errors import InputError
from .hooks.points import HookPoint
from .runs import Resume

if TYPE_CHECKING:
    from .lens import Lens
    from .models.model import Model

LENS_FILE = "params.safetensors"
RELEASED_FILE = "params.pt"


class TunedLens(nn.Module):
    """Per-layer affine translators for one model's residual stream (see module docstring)."""

    def __init__(self, d_model: int, n_layers: int, *, bias: bool = True, base_model: str = ""):
        super().__init__()
        self.d_model, self.n_layers, self.bias, self.base_model = d_model, n_layers, bias, base_model
        self.translators = nn.ModuleList(nn.Linear(d_model, d_model, bias=bias) for _ in range(n_layers))
        for t in self.translators:
            nn.init.zeros_(t.weight)
            if t.bias is not None:
                nn.init.zeros_(t.bias)

    @classmethod
    def for_model(cls, model: Model, *, bias: bool = True) -> TunedLens:
        """An identity-initialised lens for ``model`` (float32, on the model's device)."""
        return cls(model.d_model, model.n_layers, bias=bias, base_model=model.name).to(model.device)

    def translate(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """``h + A h + b`` for the residual entering ``layer``."""
        t = self.translators[layer]
        x = h.to(t.weight.dtype)
        return x + t(x)

    name = "tuned"

    def check(self, point: HookPoint) -> None:
        """A clear error for a point the tuned lens has no translator for."""
        self.translator_for(point)

    def translator_for(self, point: HookPoint) -> int | None:
        """The translator of a residual point (None: the model's own output, decoded as it is)."""
        if point.kind == "embed":
            return 0
        if point.kind == "resid_pre" and point.layer is not None:
            return point.layer
        if point.kind == "resid_post" and point.layer is not None:
            return point.layer + 1 if point.layer + 1 < self.n_layers else None
        if point.kind == "final_norm":
            return None
        raise InputError(f"the tuned lens decodes the residual stream between layers (embed, resid_pre, "
                         f"resid_post); it has no translator for {point.name}")

    def logits(self, model: Model, point: HookPoint, h: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """Decode ``h`` read at ``point`` (float32 logits)."""
        i = self.translator_for(point)
        x = h if i is None else self.translate(i, h)
        unembed = model.unembed
        if grad:
            return unembed.forward(x, normalize=point.kind != "final_norm")
        with torch.no_grad():
            return unembed(x, normalize=point.kind != "final_norm")

    # -- files -------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"format": "actlab-tuned-lens", "d_model": self.d_model, "num_hidden_layers": self.n_layers,
                "bias": self.bias, "base_model_name_or_path": self.base_model, "reads": "blocks.{i}.resid_pre"}

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """``params.safetensors`` + ``config.json`` in ``folder`` (each written atomically)."""
        from safetensors.torch import save_file

        from .runs import atomic_path, write_json

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {f"{i}.{k}": v.detach().cpu().contiguous() for i, t in enumerate(self.translators)
                 for k, v in t.state_dict().items()}
        with atomic_path(out / LENS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": "actlab-tuned-lens"})
        write_json(out / "config.json", self.config())
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike[str], model: Model | None = None) -> TunedLens:
        """A lens saved by :meth:`save`, or a released ``tuned-lens`` folder (``params.pt`` + ``config.json``,
        read with ``weights_only=True``); checked against ``model`` when given."""
        p = Path(folder)
        cfg_path = p / "config.json"
        if not p.is_dir() or not cfg_path.is_file():
            raise InputError(f"{p} is not a tuned-lens folder (it needs config.json and {LENS_FILE} or "
                             f"{RELEASED_FILE})")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            d, n, bias = int(cfg["d_model"]), int(cfg["num_hidden_layers"]), bool(cfg.get("bias", True))
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"{cfg_path}: not a tuned-lens config ({e})") from None
        if (p / LENS_FILE).is_file():
            from safetensors.torch import load_file

            state = load_file(str(p / LENS_FILE))
        elif (p / RELEASED_FILE).is_file():
            try:
                state = torch.load(p / RELEASED_FILE, map_location="cpu", weights_only=True)
            except Exception as e:  # the restricted unpickler refuses anything but tensors and containers
                raise InputError(f"{p / RELEASED_FILE} is not a plain tensor checkpoint; refusing to unpickle "
                                 f"it ({type(e).__name__}: {str(e)[:200]})") from None
        else:
            raise InputError(f"{p} has config.json but neither {LENS_FILE} nor {RELEASED_FILE}")
        lens = cls(d, n, bias=bias, base_model=str(cfg.get("base_model_name_or_path", "")))
        state = {k.removeprefix("layer_translators."): v for k, v in state.items()}
        try:
            lens.translators.load_state_dict(state)
        except RuntimeError as e:
            raise InputError(f"{p}: the translators do not match its config ({str(e)[:300]})") from None
        if model is not None:
            if (d, n) != (model.d_model, model.n_layers):
                raise InputError(f"tuned lens {p} is for d_model {d} with {n} layers; {model.name!r} has d_model "
                                 f"{model.d_model} and {model.n_layers} layers")
            lens = lens.to(model.device)
        return lens


def parse_lens(spec: str | None, model: Model) -> Lens:
    """``--lens``: ``logit`` (or None) for the logit lens, ``tuned:PATH`` for a tuned lens folder."""
    from .lens import LogitLens

    if spec is None or spec == "logit":
        return LogitLens()
    if spec.startswith("tuned:") and spec[len("tuned:"):]:
        return TunedLens.load(spec[len("tuned:"):], model)
    raise InputError(f"unknown lens {spec!r}; valid: logit, tuned:PATH (a tuned-lens folder)")


def _batch_indices(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Which texts form each training batch: a fresh permutation per epoch, deterministic for a seed (a resumed
    run skips the batches already trained on without tokenizing them)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=g).tolist()
        for s in range(0, len(order) - batch_size + 1, batch_size):
            yield order[s:s + batch_size]


def _residuals(model: Model, batch: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                       torch.Tensor]:
    """Every layer's resid_pre (real tokens first), the final log-probabilities and the token mask."""
    pts = [HookPoint(i, "resid_pre") for i in range(model.n_layers)]
    with torch.no_grad(), model.capture(pts, positions="all", dtype=None, device=model.device) as acts:
        out = model(**batch, use_cache=False)
    mask = batch["attention_mask"].bool()
    final = torch.log_softmax(out.logits.float(), dim=-1)
    return [acts[p.name] for p in pts], final, mask


def _kl(final_logp: torch.Tensor, lens_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(lens_logits.float(), dim=-1)
    kl = (final_logp.exp() * (final_logp - logp)).sum(-1)
    return kl[mask].mean()


def train_tuned_lens(model: Model, texts: Sequence[str], *, steps: int = 250, lr: float = 1e-3,
                     momentum: float = 0.9, weight_decay: float = 1e-3, batch_size: int = 8, max_length: int = 128,
                     seed: int = 0, lens: TunedLens | None = None, optimizer: str = "adam",
                     progress: Callable[[int, float], None] | None = None, resume: Resume | None = None,
                     checkpoint_every: int = 25) -> tuple[TunedLens, list[dict[str, float]]]:
    """Train translators on ``texts`` (see module docstring); returns the lens and the per-step mean KL. With
    ``resume`` (the run folder's record), the translators, optimizer and schedule are checkpointed every
    ``checkpoint_every`` steps and a re-run continues from the latest checkpoint, bit for bit."""
    if steps < 1 or batch_size < 1 or max_length < 2:
        raise InputError(f"steps, batch_size and max_length must be positive (got {steps}, {batch_size}, "
                         f"{max_length})")
    if not texts:
        raise InputError("no training texts")
    torch.manual_seed(seed)
    lens = lens if lens is not None else TunedLens.for_model(model)
    if optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(lens.parameters(), lr=lr, momentum=momentum, nesterov=True,
                                                     weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.AdamW(lens.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise InputError(f"unknown optimizer {optimizer!r}; valid: sgd, adam")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    history: list[dict[str, float]] = []
    start = 0
    last = resume.latest() if resume is not None else None
    if last is not None:
        start, history = _load_training(last, lens, opt, sched)
    frozen = [(p, p.requires_grad) for p in model.hf.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        order = _batch_indices(len(texts), min(batch_size, len(texts)), seed)
        for _ in range(start):
            next(order)
        for step in range(start, steps):
            batch = model.tokenize([texts[i] for i in next(order)], padding_side="right", truncate_left=max_length,
                                   check_context=False)
            hs, final, mask = _residuals(model, batch)
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for i, h in enumerate(hs):  # one backward per layer keeps one layer's logits in memory
                loss = _kl(final, model.unembed.forward(lens.translate(i, h)), mask)
                loss.backward()
                total += float(loss.detach())
            opt.step()
            sched.step()
            history.append({"step": step + 1, "kl": total / len(hs)})
            if progress is not None:
                progress(step + 1, total / len(hs))
            if resume is not None and checkpoint_every > 0 and (step + 1) % checkpoint_every == 0 \
                    and step + 1 < steps:
                _save_training(resume, step + 1, lens, opt, sched, history)
    finally:
        for p, req in frozen:
            p.requires_grad_(req)
    return lens, history


def _save_training(resume: Resume, step: int, lens: TunedLens, opt: torch.optim.Optimizer, sched: Any,
                   history: list[dict[str, float]]) -> None:
    tensors = {f"lens.{k}": v for k, v in lens.state_dict().items()}
    state = opt.state_dict()
    for i, st in state["state"].items():
        for k, v in st.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v)
    resume.checkpoint(step, tensors, {"param_groups": state["param_groups"], "scheduler": sched.state_dict(),
                                      "history": history}, keep=2)


def _load_training(folder: Path, lens: TunedLens, opt: torch.optim.Optimizer, sched: Any
                   ) -> tuple[int, list[dict[str, float]]]:
    meta, t = Resume.load_checkpoint(folder)
    lens.load_state_dict({k[5:]: v for k, v in t.items() if k.startswith("lens.")})
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in t.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            opt_state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    return int(meta["step"]), list(meta["history"])


@torch.no_grad()
def evaluate_lens(model: Model, texts: Sequence[str], lens: TunedLens | None = None, *, batch_size: int = 8,
                  max_length: int = 128) -> dict[str, Any]:
    """Per layer (the residual entering it), the mean KL(final || lens) and the cross-entropy of the next token
    under the lens, over every real token with a next token; ``lens=None`` is the logit lens."""
    n = model.n_layers
    kl_sum, ce_sum, count = [0.0] * n, [0.0] * n, 0
    final_ce, total_tokens = 0.0, 0
    for s in range(0, len(texts), batch_size):
        batch = model.tokenize(list(texts[s:s + batch_size]), padding_side="right", truncate_left=max_length,
                               check_context=False)
        hs, final, mask = _residuals(model, batch)
        ids = batch["input_ids"]
        has_next = mask[:, 1:] & mask[:, :-1]
        targets = ids[:, 1:]
        for i, h in enumerate(hs):
            x = h if lens is None else lens.translate(i, h)
            logits = model.unembed(x)
            kl_sum[i] += float(_kl(final, logits, mask)) * int(mask.sum())
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            ce_sum[i] += float(-logp.gather(-1, targets[..., None])[..., 0][has_next].sum())
        final_ce += float(-final[:, :-1].gather(-1, targets[..., None])[..., 0][has_next].sum())
        count += int(has_next.sum())
        total_tokens += int(mask.sum())
    if count == 0:
        raise InputError("the evaluation texts have no token with a next token")
    return {"kl": [k / total_tokens for k in kl_sum], "cross_entropy": [c / count for c in ce_sum],
            "final_cross_entropy": final_ce / count, "tokens": total_tokens}
