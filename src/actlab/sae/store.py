"""Activation caches: sharded safetensors files + a manifest, written atomically and resumable; a shuffling
reader over a cache; and an on-the-fly buffer that refills from the live model.

A cache folder holds ``manifest.json`` and ``shard_00000.safetensors``, ... Each shard holds, for every hook
point, the activations of whole texts' real tokens (pads dropped, BOS dropped unless ``keep_bos``) as
``[n_tokens, d]``. The manifest records the model, points, widths, dtype, tokenizer, position policy, the
dataset fingerprint, and per shard its token count, text range and sha256. After each shard the manifest
is rewritten (temp file + rename), so an interrupted run resumes after the last recorded shard; a reader
verifies each shard's checksum when it loads it and names a corrupt or truncated file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ActlabError, InputError
from ..progress import info as progress_info
from ..progress import task as progress_task
from ..runs import atomic_path, folder_lock, remove_orphan_temps, sha256_file, write_json
from ..version import __version__

if TYPE_CHECKING:
    from ..models.model import Model

MANIFEST = "manifest.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CacheError(ActlabError):
    """A cache does not match what it is used for, or a shard is corrupt."""


def read_manifest(path: Path) -> dict[str, Any]:
    """A cache's manifest, or a one-line error naming the file when it is not a valid one."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CacheError(f"{path}: the cache manifest is not valid JSON ({e}); the cache is damaged: remove the "
                         "folder or pass --overwrite") from None
    if not isinstance(m, dict) or not isinstance(m.get("shards"), list):
        raise CacheError(f"{path}: not an actlab cache manifest (no 'shards' list)")
    return m


def _fingerprint(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


# -- writing -----------------------------------------------------------------------------------------------
def _token_batch(model: Model, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    tok = model.tokenizer
    old = tok.padding_side
    tok.padding_side = "right"
    try:
        enc = tok(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    finally:
        tok.padding_side = old
    return {"input_ids": enc["input_ids"].to(model.device), "attention_mask": enc["attention_mask"].to(model.device)}


def _keep_mask(model: Model, batch: dict[str, torch.Tensor], keep_bos: bool) -> torch.Tensor:
    mask = batch["attention_mask"].bool()
    bos = getattr(model.tokenizer, "bos_token_id", None)
    if not keep_bos and bos is not None:
        mask = mask & ~((batch["input_ids"] == bos) & (torch.arange(mask.shape[1], device=mask.device) == 0))
    return mask


def estimate_tokens(model: Model, texts: Sequence[str], max_length: int, keep_bos: bool, sample: int = 512) -> int:
    """Tokens the cache will hold (exact for up to ``sample`` texts, extrapolated beyond)."""
    part = list(texts[:sample])
    counts = []
    for s in range(0, len(part), 64):
        b = _token_batch(model, part[s:s + 64], max_length)
        counts += _keep_mask(model, b, keep_bos).sum(1).tolist()
    per_text = sum(counts) / max(len(counts), 1)
    return round(per_text * len(texts))


def cache_activations(
    model: Model,
    texts: Sequence[str],
    points: str | Iterable[str],
    out_dir: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    batch_size: int = 16,
    shard_tokens: int = 65536,
    max_length: int = 256,
    keep_bos: bool = False,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Stream ``texts`` through the model and write the activations at ``points`` (see module docstring).
    The folder is locked while it is written; a resumed run first removes what an interrupted one left half
    written (temp files, shards the manifest does not list)."""
    from ..parallel import rank_and_world

    out = Path(out_dir)
    rank, world = rank_and_world()
    if world > 1:  # under torchrun: rank 0 holds the folder and merges, every rank writes its own shards
        return _cache_distributed(model, texts, points, out, rank=rank, world=world, dtype=dtype,
                                  batch_size=batch_size, shard_tokens=shard_tokens, max_length=max_length,
                                  keep_bos=keep_bos, overwrite=overwrite, progress=progress)
    with folder_lock(out, "activation cache"):
        removed = remove_orphan_temps(out)
        if removed:
            progress_info(f"cache: removed {len(removed)} unfinished temp file(s) of an interrupted run")
        return _cache_locked(model, texts, points, out, dtype=dtype, batch_size=batch_size,
                             shard_tokens=shard_tokens, max_length=max_length, keep_bos=keep_bos,
                             overwrite=overwrite, progress=progress)


def _identity(model: Model, texts: Sequence[str], points: str | Iterable[str], *, dtype: str, max_length: int,
              keep_bos: bool) -> tuple[list, dict[str, int], dict[str, Any]]:
    if dtype not in DTYPES:
        raise InputError(f"unknown cache dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    if not texts:
        raise InputError("no texts to cache")
    pts = model.parse_points(points)
    widths = {p.name: p.width(model) for p in pts}
    fp = _fingerprint(texts)
    identity = {"model": model.name, "points": [p.name for p in pts], "d": widths, "dtype": dtype,
                "tokenizer": getattr(model.tokenizer, "name_or_path", ""), "dataset_fingerprint": fp,
                "n_texts": len(texts), "max_length": max_length, "keep_bos": keep_bos,
                "positions": "all real tokens; pads dropped" + ("" if keep_bos else "; BOS dropped")}
    return pts, widths, identity


def _cache_locked(model: Model, texts: Sequence[str], points: str | Iterable[str], out: Path, *, dtype: str,
                  batch_size: int, shard_tokens: int, max_length: int, keep_bos: bool, overwrite: bool,
                  progress: Callable[[int], None] | None, span: tuple[int, int] | None = None,
                  mpath: Path | None = None, prefix: str = "shard_") -> dict[str, Any]:
    """Cache texts ``span`` (default: all) into ``out``, recorded in ``mpath`` (default: the manifest), shards
    named ``{prefix}{k:05d}``."""
    pts, widths, identity = _identity(model, texts, points, dtype=dtype, max_length=max_length, keep_bos=keep_bos)
    lo, hi = span or (0, len(texts))
    manifest: dict[str, Any] | None = None
    mpath = mpath or out / MANIFEST
    if mpath.exists() and not overwrite:
        old = read_manifest(mpath)
        diff = [k for k in identity if old.get(k) != identity[k]]
        if diff:
            raise CacheError(f"{out} holds a cache of something else (differs in {', '.join(diff)}: "
                             + "; ".join(f"{k} {old.get(k)!r} vs {identity[k]!r}" for k in diff[:3])
                             + "); use another folder or overwrite=True (--overwrite)")
        manifest = old
        if span is not None and old.get("span") != list(span):  # another world size cut the texts otherwise
            manifest = None
        elif manifest.get("complete"):
            return manifest
    if manifest is not None:
        listed = {sh["file"] for sh in manifest["shards"]}
        for f in out.glob(f"{prefix}[0-9]*.safetensors"):
            if f.name not in listed:  # written after the last manifest update; its texts are redone
                f.unlink()
    if manifest is None:
        leftovers = [*out.glob(f"{prefix}[0-9]*.safetensors")]
        if span is None:  # what an interrupted torchrun cache left: its parts are not resumed by one process
            leftovers += [*out.glob("shard_r[0-9]*.safetensors"), *out.glob("manifest.rank*.json")]
        for f in leftovers:
            f.unlink()
        est = estimate_tokens(model, texts[lo:hi], max_length, keep_bos)
        bytes_per = torch.tensor([], dtype=DTYPES[dtype]).element_size()
        est_bytes = est * sum(widths.values()) * bytes_per
        free = shutil.disk_usage(out).free
        if est_bytes > free * 0.95:
            raise CacheError(f"the cache needs about {est_bytes / 1e9:.2f} GB ({est} tokens x "
                             f"{sum(widths.values())} values x {bytes_per} bytes) but {out} has "
                             f"{free / 1e9:.2f} GB free")
        manifest = {**identity, "format": "actlab-activation-cache", "version": 1, "actlab_version": __version__,
                    "estimated_tokens": est, "estimated_bytes": est_bytes, "shards": [], "n_tokens": 0,
                    "n_texts_done": lo, "complete": False, **({"span": [lo, hi]} if span else {})}
        write_json(mpath, manifest)
    from safetensors.torch import save_file

    done = int(manifest["n_texts_done"])
    if done > lo:
        progress_info(f"cache: resuming after {done - lo} of {hi - lo} texts ({len(manifest['shards'])} shards)")
    buf: dict[str, list[torch.Tensor]] = {p.name: [] for p in pts}
    buffered, start = 0, done

    def flush(end: int) -> None:
        nonlocal buffered, start
        k = len(manifest["shards"])
        name = f"{prefix}{k:05d}.safetensors"
        tensors = {n: torch.cat(v).contiguous() for n, v in buf.items()}
        with atomic_path(out / name) as tmp:
            save_file(tensors, str(tmp), metadata={"texts": f"{start}:{end}"})
        manifest["shards"].append({"file": name, "n_tokens": buffered, "texts": [start, end],
                                   "sha256": sha256_file(out / name)})
        manifest["n_tokens"] += buffered
        manifest["n_texts_done"] = end
        write_json(mpath, manifest)
        for v in buf.values():
            v.clear()
        buffered, start = 0, end

    target = DTYPES[dtype]
    with progress_task("caching activations", total=hi - done, unit="texts", callback=progress) as task:
        for s in range(done, hi, batch_size):
            chunk = texts[s:min(s + batch_size, hi)]
            batch = _token_batch(model, chunk, max_length)
            keep = _keep_mask(model, batch, keep_bos)
            acts = model.activations(batch, pts, positions=keep, dtype=target)
            for n, x in acts.items():
                buf[n].append(x)
            buffered += int(keep.sum())
            task.advance(len(chunk), tokens=manifest["n_tokens"] + buffered)
            if buffered >= shard_tokens:
                flush(s + len(chunk))
        if buffered:
            flush(hi)
    manifest["complete"] = True
    write_json(mpath, manifest)
    return manifest


def _cache_distributed(model: Model, texts: Sequence[str], points: str | Iterable[str], out: Path, *, rank: int,
                       world: int, dtype: str, batch_size: int, shard_tokens: int, max_length: int, keep_bos: bool,
                       overwrite: bool, progress: Callable[[int], None] | None) -> dict[str, Any]:
    """One rank's share of a cache under torch.distributed: rank r caches a contiguous block of whole batches
    (the batches one process would run, so the activations are the same numbers) into ``shard_rNN_*`` files
    with its own resumable manifest; rank 0 then writes one manifest listing every shard in text order."""
    from ..parallel import barrier, block_range, broadcast

    _, _, identity = _identity(model, texts, points, dtype=dtype, max_length=max_length, keep_bos=keep_bos)
    mpath = out / MANIFEST
    with contextlib.ExitStack() as stack:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(folder_lock(out, "activation cache"))
            remove_orphan_temps(out)
            old = read_manifest(mpath) if mpath.exists() and not overwrite else None
            stale = (old is not None and not old.get("complete")
                     and all(old.get(k) == v for k, v in identity.items()))
            if overwrite or stale:  # stale: a one-process run was interrupted; its shards are redone in blocks
                for f in [*out.glob("shard_[0-9]*.safetensors"), *out.glob(MANIFEST)]:
                    f.unlink()
            if overwrite:
                for f in [*out.glob("shard_r[0-9]*.safetensors"), *out.glob("manifest.rank*.json")]:
                    f.unlink()
        barrier()  # the folder is clean before any rank writes
        if mpath.exists():
            old = read_manifest(mpath)
            diff = [k for k in identity if old.get(k) != identity[k]]
            if diff:  # every rank sees the same file, so every rank stops here
                raise CacheError(f"{out} holds a cache of something else (differs in {', '.join(diff)}); use "
                                 "another folder or overwrite=True (--overwrite)")
            if old.get("complete"):
                return old
        span = block_range(len(texts), batch_size, rank, world)
        if span[1] > span[0]:
            _cache_locked(model, texts, points, out, dtype=dtype, batch_size=batch_size,
                                 shard_tokens=shard_tokens, max_length=max_length, keep_bos=keep_bos,
                                 overwrite=False, progress=progress, span=span,
                                 mpath=out / f"manifest.rank{rank:02d}.json", prefix=f"shard_r{rank:02d}_")
        barrier()  # every part is written
        merged = None
        if rank == 0:
            parts = [read_manifest(p) for r in range(world)
                     if (p := out / f"manifest.rank{r:02d}.json").exists()]
            shards = [sh for pm in sorted(parts, key=lambda pm: pm["span"][0]) for sh in pm["shards"]]
            merged = {**{k: v for k, v in parts[0].items() if k not in ("span", "estimated_tokens",
                                                                         "estimated_bytes")},
                      "shards": shards, "n_tokens": sum(sh["n_tokens"] for sh in shards),
                      "n_texts_done": len(texts), "complete": True, "world_size": world}
            write_json(mpath, merged)
            for r in range(world):
                (out / f"manifest.rank{r:02d}.json").unlink(missing_ok=True)
        return broadcast(merged)


# -- reading -----------------------------------------------------------------------------------------------
class CacheReader:
    """Reads a cache folder for one hook point; refuses a cache of another model or point."""

    def __init__(self, folder: str | os.PathLike[str], point: str, *, model: str | None = None,
                 verify: bool = True):
        self.folder = Path(folder)
        mpath = self.folder / MANIFEST
        if not mpath.is_file():
            raise CacheError(f"{self.folder} is not an activation cache (no {MANIFEST})")
        self.manifest = read_manifest(mpath)
        m = self.manifest
        if model is not None and m.get("model") != model:
            raise CacheError(f"the cache in {self.folder} is from model {m.get('model')!r}, not {model!r}")
        if point not in m.get("points", []):
            raise CacheError(f"the cache in {self.folder} holds {m.get('points')}, not hook point {point!r}")
        if not m.get("shards"):
            raise CacheError(f"the cache in {self.folder} has no shards yet")
        self.point, self.verify = point, verify
        self.d = int(m["d"][point])
        self._verified: set[str] = set()

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    def load_shard(self, k: int) -> torch.Tensor:
        from safetensors import safe_open

        info = self.manifest["shards"][k]
        path = self.folder / info["file"]
        if not path.is_file():
            raise CacheError(f"shard {path} listed in the manifest is missing")
        if self.verify and info["file"] not in self._verified:
            if sha256_file(path) != info["sha256"]:
                raise CacheError(f"shard {path} is corrupt or truncated (sha256 does not match the manifest)")
            self._verified.add(info["file"])
        try:
            with safe_open(str(path), framework="pt") as f:
                x = f.get_tensor(self.point)
        except Exception as e:
            raise CacheError(f"shard {path} cannot be read: {e}") from None
        if x.shape != (info["n_tokens"], self.d):
            raise CacheError(f"shard {path} holds {tuple(x.shape)}, the manifest says ({info['n_tokens']}, {self.d})")
        return x

    def batches(self, batch_size: int, *, seed: int = 0, shuffle: bool = True, buffer_shards: int = 4,
                epochs: int | None = 1) -> Iterator[torch.Tensor]:
        """Global batches ``[batch_size, d]`` (float32), shuffled within a buffer of shards; deterministic for a
        seed. ``epochs=None`` cycles forever. A final incomplete batch of an epoch is carried into the next."""
        if batch_size > self.n_tokens:  # no batch could ever fill: refuse rather than loop forever
            raise InputError(f"a batch of {batch_size:,} activations is larger than the cache in {self.folder}, "
                             f"which holds {self.n_tokens:,} tokens; use a batch size of at most {self.n_tokens:,} "
                             "or cache more text")
        g = torch.Generator().manual_seed(seed)
        n_shards = len(self.manifest["shards"])
        carry: torch.Tensor | None = None
        epoch = 0
        while epochs is None or epoch < epochs:
            order = torch.randperm(n_shards, generator=g).tolist() if shuffle else list(range(n_shards))
            for s in range(0, n_shards, buffer_shards):
                parts = [self.load_shard(k).float() for k in order[s:s + buffer_shards]]
                if carry is not None:
                    parts.insert(0, carry)
                data = torch.cat(parts)
                if shuffle:
                    data = data[torch.randperm(len(data), generator=g)]
                n_full = len(data) // batch_size
                for b in range(n_full):
                    yield data[b * batch_size:(b + 1) * batch_size]
                carry = data[n_full * batch_size:]
            epoch += 1


def online_batches(model: Model, texts: Sequence[str], point: str, batch_size: int, *, buffer_tokens: int = 65536,
                   seed: int = 0, max_length: int = 256, text_batch: int = 16, keep_bos: bool = False,
                   epochs: int | None = 1) -> Iterator[torch.Tensor]:
    """Batches straight from the live model (no disk): a buffer of ``buffer_tokens`` activations is filled,
    shuffled, drained to half, refilled."""
    pts = model.parse_points(point)
    if len(pts) != 1:
        raise InputError(f"online batches read one hook point; {point!r} names {len(pts)}")
    name = pts[0].name
    g = torch.Generator().manual_seed(seed)
    epoch = 0
    buf = torch.empty(0)
    while epochs is None or epoch < epochs:
        for s in range(0, len(texts), text_batch):
            batch = _token_batch(model, texts[s:s + text_batch], max_length)
            x = model.activations(batch, pts, positions=_keep_mask(model, batch, keep_bos), dtype=torch.float32)[name]
            buf = torch.cat([buf.reshape(-1, x.shape[-1]), x])
            if len(buf) >= buffer_tokens:
                buf = buf[torch.randperm(len(buf), generator=g)]
                while len(buf) >= max(buffer_tokens // 2, batch_size):
                    yield buf[:batch_size]
                    buf = buf[batch_size:]
        epoch += 1
    buf = buf[torch.randperm(len(buf), generator=g)] if len(buf) else buf
    while len(buf) >= batch_size:
        yield buf[:batch_size]
        buf = buf[batch_size:]
