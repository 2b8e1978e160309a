"""Paired activations: the same token stream through two (or more) models, each cached with the activation
cache (:func:`actlab.sae.cache_activations`: sharded, checksummed, resumable), read back side by side.

Two caches pair when they were made from the same texts with the same settings and cut into the same shards
holding the same number of tokens each (same tokenizer); anything else is refused naming what differs. Rows
are ``[tokens, sum_i d_i]`` (model 0's activations, then model 1's), shuffled together, so the token at a row is
the same in every model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import InputError
from ..sae.store import CacheReader

PAIRED_KEYS = ("dataset_fingerprint", "n_texts", "max_length", "keep_bos", "n_tokens")


class PairedReader(CacheReader):
    """Several caches read as one (see module docstring); ``batches`` is :meth:`CacheReader.batches`."""

    def __init__(self, folders: Sequence[str | os.PathLike[str]], points: Sequence[str], *, verify: bool = True):
        if len(folders) != len(points) or len(folders) < 2:
            raise InputError("a paired cache needs two or more caches, each with its hook point")
        self.readers = [CacheReader(f, p, verify=verify) for f, p in zip(folders, points, strict=True)]
        first = self.readers[0].manifest
        for r in self.readers[1:]:
            m = r.manifest
            for key in PAIRED_KEYS:
                if m.get(key) != first.get(key):
                    raise InputError(f"the caches {self.readers[0].folder} and {r.folder} do not hold the same token "
                                     f"stream: {key} is {first.get(key)!r} vs {m.get(key)!r} (same texts, max length "
                                     "and tokenizer are needed)")
            a = [(s["texts"], s["n_tokens"]) for s in first["shards"]]
            b = [(s["texts"], s["n_tokens"]) for s in m["shards"]]
            if a != b:
                raise InputError(f"the caches {self.readers[0].folder} and {r.folder} are cut into different shards; "
                                 "cache both with the same --shard-tokens and world size")
        self.folder = Path(self.readers[0].folder)
        self.manifest = first
        self.point = "+".join(points)
        self.widths = [r.d for r in self.readers]
        self.d = sum(self.widths)
        self.verify = verify
        self._verified: set[str] = set()

    def load_shard(self, k: int) -> torch.Tensor:
        return torch.cat([r.load_shard(k).float() for r in self.readers], 1)
