"""Plain text datasets: JSONL/JSON (a text field), CSV (a text column), plain text (one per non-empty line),
or a folder saved with HF ``datasets`` (``save_to_disk``); and IMDb review prefixes (the RL prompts)."""

from __future__ import annotations

import os
from pathlib import Path

from .readers import DatasetError, check_limit, csv_rows, first_field, read_text, rows

TEXT_FIELDS = ("text", "review", "content", "document", "prompt", "question")


def read_texts(path: str | os.PathLike[str], *, field: str | None = None, limit: int | None = None) -> list[str]:
    """Texts from a file or a saved HF dataset folder (see module docstring)."""
    p = Path(path)
    limit = check_limit(limit)
    out: list[str] = []
    keys = (field,) if field else TEXT_FIELDS
    if p.is_dir():
        out = _hf_folder(p, keys, limit)
    elif not p.is_file():
        raise DatasetError(f"dataset {str(p)!r} does not exist")
    elif p.suffix.lower() == ".csv":
        for _, key, row in csv_rows(p, keys):
            if (row.get(key) or "").strip():
                out.append(row[key])
            if limit and len(out) >= limit:
                break
    elif p.suffix.lower() in (".jsonl", ".json") or p.name.endswith(".jsonl.gz"):
        for line, obj in rows(p):
            if isinstance(obj, str) and not obj.strip():
                continue  # empty texts carry no activations; skipped like empty CSV cells
            out.append(first_field(p, line, obj, keys))
            if limit and len(out) >= limit:
                break
    else:
        for line in read_text(p).splitlines():
            if line.strip():
                out.append(line)
            if limit and len(out) >= limit:
                break
    if not out:
        raise DatasetError(f"{p}: no texts")
    return out


def _hf_folder(p: Path, keys: tuple[str, ...], limit: int | None) -> list[str]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as e:  # pragma: no cover - datasets is a dependency
        raise DatasetError("reading a saved HF dataset folder needs the datasets package") from e
    try:
        ds = load_from_disk(str(p))
    except (FileNotFoundError, ValueError) as e:
        raise DatasetError(f"{p}: not a dataset saved with datasets.save_to_disk ({e})") from None
    if isinstance(ds, DatasetDict):
        ds = ds[next(iter(ds.keys()))]  # take the first split
    col = next((k for k in keys if k in ds.column_names), None)
    if col is None:
        raise DatasetError(f"{p}: no column named {' or '.join(keys)} (columns: {', '.join(ds.column_names)})")
    out = []
    for t in ds[col]:
        out.append(str(t))
        if limit and len(out) >= limit:
            break
    return out


def imdb_prefixes(path: str | os.PathLike[str], n: int, words: int = 8) -> list[str]:
    """The first ``words`` words of ``n`` IMDb reviews (HTML line breaks removed)."""
    out = []
    for _, key, row in csv_rows(path, ("text",), what="IMDb file"):
        ws = row[key].replace("<br />", " ").split()
        if len(ws) >= words:
            out.append(" ".join(ws[:words]))
        if len(out) >= n:
            break
    if not out:
        raise DatasetError(f"{path}: no review has {words} words")
    return out
