"""Activation caches: sharded safetensors files + a manifest, written atomically and resumable; a shuffling
reader over a cache; and an on-the-fly buffer that refills from the live model.

A cache folder holds ``manifest.json`` and ``shard_00000.safetensors``, ... Each shard holds, for every hook
point, the activations of whole texts' real tokens (pads dropped, BOS dropped unless ``keep_bos``) as
``[n_tokens, d]``. The manifest - the index readers use - records the model, points, widths, dtype, tokenizer,
position policy, the dataset fingerprint, and per shard its token count, text range and sha256. Progress is
kept in the folder's resume record (:class:`actlab.runs.Resume`: the settings, the shards written, the texts
done), updated after each shard, so an interrupted run resumes after the last recorded shard, and a cache of
other settings in the folder is refused; the manifest is rewritten from it (temp file + rename). A reader
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
from ..runs import Resume, atomic_path, folder_lock, remove_orphan_temps, sha256_file, write_json
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


def check_space(out: Path, tokens: int, values: int, dtype: str) -> int:
    """The bytes a cache of ``tokens`` x ``values`` needs; a :class:`CacheError` when ``out``'s disk lacks them."""
    bytes_per = torch.tensor([], dtype=DTYPES[dtype]).element_size()
    need = tokens * values * bytes_per
    where = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(where).free
    if need > free * 0.95:
        raise CacheError(f"the cache needs about {need / 1e9:.2f} GB ({tokens} tokens x {values} values x "
                         f"{bytes_per} bytes) but {out} has {free / 1e9:.2f} GB free")
    return need


def check_space_before_loading(model: str, gguf_file: str | None, texts: Sequence[str], points: Sequence[str],
                               out: Path, *, max_length: int, keep_bos: bool, dtype: str) -> None:
    """:func:`check_space` for a new cache before the model loads, from a local model folder's config and
    tokenizer (no weights read). GGUF files, hub ids and hook points whose width the config does not give are
    checked after the load, as before."""
    from types import SimpleNamespace

    from ..hooks.points import RESIDUAL_KINDS, parse_points
    from ..models.loading import _resolve

    if out.exists() and any(out.iterdir()):
        return  # an existing cache: its resume record decides what is left to write
    try:
        kind, location, _ = _resolve(model, gguf_file)
        if kind != "folder":
            return
        from transformers import AutoConfig, AutoTokenizer

        cfg = AutoConfig.from_pretrained(location)
        tok = AutoTokenizer.from_pretrained(location)
    except Exception:  # the load reports whatever is wrong with the model
        return
    d_model = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None)
    n_layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    if not d_model or not n_layers:
        return
    try:
        pts = parse_points(list(points), int(n_layers))
    except ActlabError:
        return
    if any(p.kind not in (*RESIDUAL_KINDS, "embed", "final_norm") for p in pts):
        return
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    shim = SimpleNamespace(tokenizer=tok, device=torch.device("cpu"))
    check_space(out, estimate_tokens(shim, texts, max_length, keep_bos), len(pts) * int(d_model), dtype)


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
    widths = {}
    for p in pts:
        w = p.row_width(model)
        if w is None:
            raise InputError(f"{p.name} cannot be cached: an attention pattern has one value per key, and the "
                             "number of keys changes with every text; cache the attention's inputs or outputs "
                             "instead (attn.q/k/v/z, attn_out)")
        widths[p.name] = w
    fp = _fingerprint(texts)
    identity = {"model": model.name, "points": [p.name for p in pts], "d": widths, "dtype": dtype,
                "tokenizer": getattr(model.tokenizer, "name_or_path", ""), "dataset_fingerprint": fp,
                "n_texts": len(texts), "max_length": max_length, "keep_bos": keep_bos,
                "positions": "all real tokens; pads dropped" + ("" if keep_bos else "; BOS dropped")}
    return pts, widths, identity


def _cache_locked(model: Model, texts: Sequence[str], points: str | Iterable[str], out: Path, *, dtype: str,
                  batch_size: int, shard_tokens: int, max_length: int, keep_bos: bool, overwrite: bool,
                  progress: Callable[[int], None] | None, span: tuple[int, int] | None = None,
                  job: str = "acts cache", prefix: str = "shard_") -> dict[str, Any]:
    """Cache texts ``span`` (default: all) into ``out``, its progress in the resume record of ``job``, shards
    named ``{prefix}{k:05d}``; the manifest is written only for the whole cache (``span`` None)."""
    pts, widths, identity = _identity(model, texts, points, dtype=dtype, max_length=max_length, keep_bos=keep_bos)
    lo, hi = span or (0, len(texts))
    mpath = out / MANIFEST
    settings = {**identity, **({"span": [lo, hi]} if span else {})}
    recorded = Resume.recorded_settings(out, job)
    if span is not None and recorded is not None and recorded != settings:
        overwrite = True  # another world size cut the texts otherwise: this rank's part starts again
    if recorded is None and span is None and mpath.exists() and not overwrite:
        _adopt_manifest(out, mpath, identity)  # a cache written before resume records: keep it when complete
    resume = Resume(out, job, settings, overwrite=overwrite)
    saved = resume.load()
    state = saved[0] if saved is not None else None
    if resume.done("complete") and state is not None:
        return _manifest(identity, state, complete=True, span=span)
    if state is not None:
        listed = {sh["file"] for sh in state["shards"]}
        for f in out.glob(f"{prefix}[0-9]*.safetensors"):
            if f.name not in listed:  # written after the last progress update; its texts are redone
                f.unlink()
    else:
        leftovers = [*out.glob(f"{prefix}[0-9]*.safetensors")]
        if span is None:  # what an interrupted torchrun cache left: its parts are not resumed by one process
            leftovers += [*out.glob("shard_r[0-9]*.safetensors"), *out.glob(MANIFEST)]
            Resume.forget_jobs(out, "acts cache rank ")
        for f in leftovers:
            f.unlink()
        est = estimate_tokens(model, texts[lo:hi], max_length, keep_bos)
        est_bytes = check_space(out, est, sum(widths.values()), dtype)
        state = {"estimated_tokens": est, "estimated_bytes": est_bytes, "shards": [], "n_tokens": 0,
                 "n_texts_done": lo}
        resume.save(state)
    from safetensors.torch import save_file

    done = int(state["n_texts_done"])
    if done > lo:
        progress_info(f"cache: resuming after {done - lo} of {hi - lo} texts ({len(state['shards'])} shards)")
    buf: dict[str, list[torch.Tensor]] = {p.name: [] for p in pts}
    buffered, start = 0, done

    def record(complete: bool = False) -> None:
        resume.save(state)
        if span is None:
            write_json(mpath, _manifest(identity, state, complete=complete))

    def flush(end: int) -> None:
        nonlocal buffered, start
        k = len(state["shards"])
        name = f"{prefix}{k:05d}.safetensors"
        tensors = {n: torch.cat(v).contiguous() for n, v in buf.items()}
        with atomic_path(out / name) as tmp:
            save_file(tensors, str(tmp), metadata={"texts": f"{start}:{end}"})
        state["shards"].append({"file": name, "n_tokens": buffered, "texts": [start, end],
                                "sha256": sha256_file(out / name)})
        state["n_tokens"] += buffered
        state["n_texts_done"] = end
        record()
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
                buf[n].append(x.reshape(x.shape[0], -1))  # per-head kinds: heads side by side
            buffered += int(keep.sum())
            task.advance(len(chunk), tokens=state["n_tokens"] + buffered)
            if buffered >= shard_tokens:
                flush(s + len(chunk))
        if buffered:
            flush(hi)
    record(complete=True)
    resume.mark("complete", {"n_tokens": state["n_tokens"], "shards": len(state["shards"])})
    return _manifest(identity, state, complete=True, span=span)


def _manifest(identity: dict[str, Any], state: dict[str, Any], *, complete: bool,
              span: tuple[int, int] | None = None) -> dict[str, Any]:
    """The manifest readers use: the cache's identity, its shards, and whether it is complete."""
    return {**identity, "format": "actlab-activation-cache", "version": 1, "actlab_version": __version__,
            **{k: state[k] for k in ("estimated_tokens", "estimated_bytes") if k in state},
            "shards": state["shards"], "n_tokens": state["n_tokens"], "n_texts_done": state["n_texts_done"],
            "complete": complete, **({"span": list(span)} if span else {})}


def _adopt_manifest(out: Path, mpath: Path, identity: dict[str, Any]) -> None:
    """A folder holding a manifest but no resume record (written by an earlier actlab): a cache of other
    settings is refused; a complete one of the same settings is recorded as done, so it is reused."""
    old = read_manifest(mpath)
    diff = [k for k in identity if old.get(k) != identity[k]]
    if diff:
        raise CacheError(f"{out} holds a cache of something else (differs in {', '.join(diff)}: "
                         + "; ".join(f"{k} {old.get(k)!r} vs {identity[k]!r}" for k in diff[:3])
                         + "); use another folder or overwrite=True (--overwrite)")
    if old.get("complete"):
        r = Resume(out, "acts cache", identity)
        r.save({k: old[k] for k in ("shards", "n_tokens", "n_texts_done")})
        r.mark("complete", {"n_tokens": old["n_tokens"], "shards": len(old["shards"]), "adopted": True})


def _cache_distributed(model: Model, texts: Sequence[str], points: str | Iterable[str], out: Path, *, rank: int,
                       world: int, dtype: str, batch_size: int, shard_tokens: int, max_length: int, keep_bos: bool,
                       overwrite: bool, progress: Callable[[int], None] | None) -> dict[str, Any]:
    """One rank's share of a cache under torch.distributed: rank r caches a contiguous block of whole batches
    (the batches one process would run, so the activations are the same numbers) into ``shard_rNN_*`` files
    with its own resume record; rank 0 then writes one manifest listing every shard in text order."""
    from ..parallel import barrier, block_range, broadcast

    _, _, identity = _identity(model, texts, points, dtype=dtype, max_length=max_length, keep_bos=keep_bos)
    mpath = out / MANIFEST
    with contextlib.ExitStack() as stack:
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(folder_lock(out, "activation cache"))
            whole = Resume(out, "acts cache", identity, overwrite=overwrite)  # other settings: refused
            if whole.resumed and not whole.done("complete"):
                # a one-process run was interrupted: its shards are redone in blocks
                for f in [*out.glob("shard_[0-9]*.safetensors"), *out.glob(MANIFEST)]:
                    f.unlink()
                whole.forget()
            if overwrite:
                for f in [*out.glob("shard_[0-9]*.safetensors"), *out.glob("shard_r[0-9]*.safetensors"),
                          *out.glob(MANIFEST)]:
                    f.unlink()
                Resume.forget_jobs(out, "acts cache rank ")
        barrier()  # the folder is clean before any rank writes
        recorded = Resume.recorded_settings(out, "acts cache")
        if recorded == identity and mpath.exists():
            old = read_manifest(mpath)
            if old.get("complete"):
                return old
        span = block_range(len(texts), batch_size, rank, world)
        if span[1] > span[0]:
            _cache_locked(model, texts, points, out, dtype=dtype, batch_size=batch_size,
                          shard_tokens=shard_tokens, max_length=max_length, keep_bos=keep_bos,
                          overwrite=False, progress=progress, span=span, job=f"acts cache rank {rank:02d}",
                          prefix=f"shard_r{rank:02d}_")
        barrier()  # every part is written
        merged = None
        if rank == 0:
            parts = []
            for r in range(world):
                rec = Resume.recorded_settings(out, f"acts cache rank {r:02d}")
                if rec is not None:
                    part = Resume(out, f"acts cache rank {r:02d}", rec)
                    loaded = part.load()
                    if loaded is not None:
                        parts.append((rec["span"][0], loaded[0]))
                    part.forget()
            shards = [sh for _, st in sorted(parts, key=lambda p: p[0]) for sh in st["shards"]]
            merged = {**_manifest(identity, {"shards": shards, "n_tokens": sum(sh["n_tokens"] for sh in shards),
                                             "n_texts_done": len(texts)}, complete=True), "world_size": world}
            whole = Resume(out, "acts cache", identity)
            whole.save({k: merged[k] for k in ("shards", "n_tokens", "n_texts_done")})
            whole.mark("complete", {"n_tokens": merged["n_tokens"], "shards": len(shards), "world_size": world})
            write_json(mpath, merged)
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
    if pts[0].row_width(model) is None:
        raise InputError(f"{name} has no fixed width per token (an attention pattern); read another point")
    g = torch.Generator().manual_seed(seed)
    epoch = 0
    buf = torch.empty(0)
    while epochs is None or epoch < epochs:
        for s in range(0, len(texts), text_batch):
            batch = _token_batch(model, texts[s:s + text_batch], max_length)
            x = model.activations(batch, pts, positions=_keep_mask(model, batch, keep_bos), dtype=torch.float32)[name]
            x = x.reshape(x.shape[0], -1)  # per-head kinds: heads side by side
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
