"""GGUF (llama.cpp) files: metadata, tokenizer fixes and a cache of de-quantized weights.

transformers de-quantizes GGUF tensors on every load (tens of seconds, minutes for 7B+). actlab saves the
de-quantized model once as safetensors under ``ACTLAB_CACHE_DIR/gguf/`` and loads that afterwards.
The tokenizer transformers builds from GGUF metadata can lose the BOS/EOS/pad tokens, the chat template
and the add-BOS flag; :func:`fix_tokenizer` restores them from the file's own metadata.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ModelNotFoundError
from .model import save_pretrained_plain

GGUF_MAGIC = b"GGUF"


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file starting with the GGUF magic bytes."""
    p = Path(path)
    if not p.is_file():
        return False
    with p.open("rb") as f:
        return f.read(4) == GGUF_MAGIC


def check_gguf(path: Path) -> None:
    """Raise a clear error for a missing or non-GGUF file (cheap: reads the 24-byte header only).

    A truncated body is reported when the file is read (by the loader)."""
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file {str(path)!r} does not exist")
    with path.open("rb") as f:
        head = f.read(24)
    if head[:4] != GGUF_MAGIC:
        raise ModelNotFoundError(
            f"{str(path)!r} is not a GGUF file (starts with {head[:4]!r}, expected {GGUF_MAGIC!r})")
    version = int.from_bytes(head[4:8], "little") if len(head) >= 8 else 0
    if version not in (1, 2, 3) or len(head) < 24:
        raise ModelNotFoundError(f"GGUF file {str(path)!r} has an unsupported or damaged header "
                                 f"(version {version}; supported: 1, 2, 3)")


_SHARED = threading.RLock()  # one thread's loads at a time: shared_reads swaps two attributes of the gguf package


@contextmanager
def shared_reads() -> Iterator[None]:
    """Inside, every ``gguf.GGUFReader`` of one file is the same reader and ``gguf.get_tensor_name_map`` is built
    once per (architecture, layers). One GGUF load through transformers opens the file three times (config,
    weights, tokenizer), each parsing the whole metadata (~6 s for a 49k-token vocabulary on 2 CPU cores), and
    builds the tensor-name map once per module (~400 times, ~20 ms each). transformers imports both names from
    the gguf package at call time, so they are swapped for the load and put back after."""
    import gguf

    with _SHARED:
        real_reader, real_map = gguf.GGUFReader, gguf.get_tensor_name_map
        readers: dict[tuple[str, str], Any] = {}

        def reader(path: str | os.PathLike[str], mode: str = "r") -> Any:
            key = (os.path.realpath(path), mode)
            if key not in readers:
                readers[key] = real_reader(path, mode)
            return readers[key]

        gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(real_map)
        try:
            yield
        finally:
            gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_map


def _reader(path: str | os.PathLike[str]) -> Any:
    from gguf import GGUFReader

    return GGUFReader(str(path))


def read_metadata(path: str | os.PathLike[str], keys: tuple[str, ...] | None = None, *,
                  reader: Any = None) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (token lists are skipped; see :func:`token_strings`)."""
    reader = reader or _reader(path)
    out: dict[str, Any] = {}
    for k, f in reader.fields.items():
        if keys is not None and k not in keys:
            continue
        if k.startswith(("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                         "tokenizer.ggml.scores")):
            continue
        try:
            out[k] = f.contents()
        except Exception:  # an unusual field type: keep going, it is metadata we do not use
            continue
    return out


def token_strings(path: str | os.PathLike[str], ids: list[int], *, reader: Any = None) -> dict[int, str]:
    """The vocabulary strings of the given token ids."""
    field = (reader or _reader(path)).fields.get("tokenizer.ggml.tokens")
    if field is None:
        return {}
    return {i: field.contents(i) for i in ids if 0 <= i < len(field.data)}


def fix_tokenizer(tokenizer: Any, path: str | os.PathLike[str]) -> list[str]:
    """Set BOS/EOS/pad/unk, the add-BOS flag and the chat template from GGUF metadata; returns what changed."""
    reader = _reader(path)
    meta = read_metadata(path, reader=reader)
    ids = {role: meta.get(f"tokenizer.ggml.{key}") for role, key in
           (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
            ("unk", "unknown_token_id"))}
    strings = token_strings(path, [int(v) for v in ids.values() if v is not None], reader=reader)
    changed: list[str] = []
    for role, tid in ids.items():
        if tid is None or int(tid) not in strings:
            continue
        want = strings[int(tid)]
        if getattr(tokenizer, f"{role}_token", None) != want:
            setattr(tokenizer, f"{role}_token", want)
            changed.append(f"{role}_token={want!r}")
    template = meta.get("tokenizer.chat_template")
    if template and getattr(tokenizer, "chat_template", None) != template:
        tokenizer.chat_template = template
        changed.append("chat_template")
    add_bos = meta.get("tokenizer.ggml.add_bos_token")
    if add_bos is not None and hasattr(tokenizer, "add_bos_token"):
        probe = tokenizer("a")["input_ids"]
        has_bos = bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id
        if has_bos != bool(add_bos):
            try:
                tokenizer.add_bos_token = bool(add_bos)
                if hasattr(tokenizer, "update_post_processor"):
                    tokenizer.update_post_processor()
            except Exception:  # tokenizers without a settable flag keep their behaviour; reported below
                pass
            changed.append(f"add_bos_token={bool(add_bos)}")
    return changed


def cache_key(path: Path, dtype: str) -> str:
    """Key for a de-quantized copy: the file's identity (path, size, mtime, first MiB) and the dtype."""
    st = path.stat()
    h = hashlib.sha256()
    h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{dtype}".encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
    import transformers

    h.update(transformers.__version__.split(".")[0].encode())
    return h.hexdigest()[:16]


def cached_folder(root: Path, path: Path, dtype: str) -> Path:
    return root / "gguf" / f"{path.stem}-{cache_key(path, dtype)}"


def save_to_cache(folder: Path, hf_model: Any, tokenizer: Any, source: dict[str, Any]) -> Path:
    """Save a de-quantized model + tokenizer; the folder appears only when complete (rename of a temp dir)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_pretrained_plain(hf_model, tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "actlab-source.json").write_text(json.dumps(source, indent=2))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
