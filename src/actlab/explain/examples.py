"""The contexts an explainer and a scorer read: for each latent, windows of tokens around its top activations,
windows sampled across its activation quantiles, and random windows where it is silent - each token with its
activation, so a scorer can mark the active ones (or, for fuzzing, wrong ones).

Latents of any dictionary (an SAE, a crosscoder seen through ``read=``, a transcoder) are read with
:func:`actlab.sae.features.scan_codes`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..models.tokens import token_strings
from ..sae.features import scan_codes

if TYPE_CHECKING:
    from ..models.model import Model


@dataclass
class Example:
    """A window of tokens (as the tokenizer spaces them) and the latent's activation on each."""

    tokens: list[str]
    acts: list[float]

    @property
    def active(self) -> list[int]:
        return [i for i, a in enumerate(self.acts) if a > 0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LatentExamples:
    """``top``: around the largest activations; ``quantile``: around activations drawn evenly from each of
    ``quantiles`` bins of the active positions (Bills et al.; delphi); ``negative``: random windows where the
    latent is zero throughout."""

    latent: int
    top: list[Example]
    quantile: list[Example]
    negative: list[Example]
    n_active: int


def _window(strings: list[str], acts: list[float], p: int, before: int, after: int) -> Example:
    lo, hi = max(0, p - before), min(len(strings), p + after + 1)
    return Example(strings[lo:hi], [max(0.0, a) for a in acts[lo:hi]])


@torch.no_grad()
def collect(model: Model, dictionary: Any, point: str, texts: Sequence[str], latents: Sequence[int], *,
            n_top: int = 10, n_quantile: int = 10, quantiles: int = 5, n_negative: int = 20, before: int = 12,
            after: int = 4, batch_size: int = 8, max_length: int = 64, seed: int = 0, read: Any = None,
            ) -> list[LatentExamples]:
    """Examples of each of ``latents`` over ``texts`` (see :class:`LatentExamples`); windows do not overlap
    within one text for the top and quantile sets."""
    feats = torch.tensor(list(latents), dtype=torch.long)
    ids_all: list[list[int]] = []
    codes_all: list[torch.Tensor] = []  # per text [T, F], -1 at invalid positions
    for _, ids, codes, _valid in scan_codes(model, dictionary, point, texts, feats, batch_size=batch_size,
                                            max_length=max_length, what="explanation examples", read=read):
        for b, row in enumerate(ids):
            ids_all.append(row)
            codes_all.append(codes[b, :len(row)].clone())
    strings = [token_strings(model.tokenizer, row) for row in ids_all]
    rng = random.Random(seed)
    out = []
    for j, latent in enumerate(latents):
        pick = _Picker(strings, [c[:, j].tolist() for c in codes_all], before, after)
        on = sorted(((a, t, p) for t, row in enumerate(pick.acts) for p, a in enumerate(row) if a > 0), reverse=True)
        top = pick.take(on, n_top)
        quantile: list[Example] = []
        rest = [x for x in on if pick.free(x[1], x[2])]
        if rest and n_quantile:
            bins = [rest[i * len(rest) // quantiles:(i + 1) * len(rest) // quantiles] for i in range(quantiles)]
            for b in bins:
                quantile += pick.take(rng.sample(b, len(b)), max(1, n_quantile // quantiles))
        silent = [(0.0, t, p) for t, row in enumerate(pick.acts) for p in range(len(row))
                  if row[p] >= 0 and all(a <= 0 for a in row[max(0, p - before):p + after + 1])]
        negative = pick.take(rng.sample(silent, min(len(silent), n_negative * 4)), n_negative)
        out.append(LatentExamples(int(latent), top, quantile, negative, len(on)))
    return out


class _Picker:
    """Windows of one latent that do not overlap within a text."""

    def __init__(self, strings: list[list[str]], acts: list[list[float]], before: int, after: int):
        self.strings, self.acts, self.before, self.after = strings, acts, before, after
        self.used: dict[int, list[int]] = {}

    def free(self, t: int, p: int) -> bool:
        return all(abs(p - q) > self.before + self.after for q in self.used.get(t, []))

    def take(self, cands: Sequence[tuple[float, int, int]], n: int) -> list[Example]:
        got: list[Example] = []
        for _a, t, p in cands:
            if len(got) == n:
                break
            if self.free(t, p):
                self.used.setdefault(t, []).append(p)
                got.append(_window(self.strings[t], self.acts[t], p, self.before, self.after))
        return got
