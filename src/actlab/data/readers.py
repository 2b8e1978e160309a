"""The one reader of dataset files: JSON arrays, JSONL (optionally gzip-compressed) and CSV, row by row, with
the file and line of every row, so a malformed row is reported as ``file:line: what is wrong``.

Every dataset format of actlab (A/B behaviour items, contrastive pairs, instruction lists, texts,
preference pairs, LFP triples) is read through :func:`rows` or :func:`csv_rows`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import InputError


class DatasetError(InputError):
    """A dataset file is missing, unparsable, or has a malformed row (named by file and line)."""


def existing_file(path: str | os.PathLike[str], what: str = "dataset file") -> Path:
    p = Path(path)
    if not p.is_file():
        if p.is_dir():
            raise DatasetError(f"{what} {str(p)!r} is a folder, not a file")
        raise DatasetError(f"{what} {str(p)!r} does not exist")
    return p


def read_text(path: Path) -> str:
    """The file's text (gzip-decompressed for ``.gz``); a binary or non-UTF-8 file is a one-line error."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}); give a JSON, JSONL or CSV file") from None
    except (OSError, EOFError) as e:
        raise DatasetError(f"{path}: cannot be read ({e})") from None


def rows(path: str | os.PathLike[str], *, what: str = "dataset file") -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every row of a JSON array or a JSONL file (``.gz`` too)."""
    p = existing_file(path, what)
    text = read_text(p)
    stripped = text.lstrip()
    if not stripped:
        raise DatasetError(f"{p}: the file is empty")
    if stripped[0] == "[":
        yield from _json_array_rows(p, text)
        return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{p}:{n}: not valid JSON ({e.msg}, column {e.colno})") from None
        except RecursionError:
            raise DatasetError(f"{p}:{n}: the JSON is nested too deeply to be a dataset row") from None


def _json_array_rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0  # line numbers counted incrementally (counting from 0 for every row was quadratic)
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        line += text.count("\n", counted, pos)
        counted = pos
        if pos >= len(text):
            raise DatasetError(f"{path}:{line}: the JSON array is not closed")
        if text[pos] == "]":
            return
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        except RecursionError:
            raise DatasetError(f"{path}:{line}: the JSON is nested too deeply to be a dataset row") from None
        yield line, obj
        pos = end


def csv_rows(path: str | os.PathLike[str], keys: Sequence[str], *, what: str = "dataset file"
             ) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(line number, chosen column, row) for every row of a CSV file; the column is the first of ``keys`` the
    header has (a clear error lists the columns otherwise)."""
    p = existing_file(path, what)
    text = read_text(p)
    # not str.splitlines: it also breaks at U+0085 / U+2028 and friends, which IMDb reviews hold inside quoted
    # fields (one review became two rows); the csv module wants the text with its own newlines untouched
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = reader.fieldnames or []
    key = next((k for k in keys if k in cols), None)
    if key is None:
        raise DatasetError(f"{p}:1: no column named {' or '.join(keys)} (columns: {', '.join(cols) or 'none'})")
    try:
        for row in reader:
            yield reader.line_num, key, row
    except csv.Error as e:
        raise DatasetError(f"{p}:{reader.line_num}: not valid CSV ({e})") from None


def text_field(path: Path | str, line: int, obj: Any, key: str) -> str:
    """``obj[key]`` as a non-empty string (a one-element list is unwrapped), or a ``file:line`` error."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}:{line}: expected an object with {key!r}, got {type(obj).__name__}")
    if key not in obj:
        raise DatasetError(f"{path}:{line}: missing field {key!r} (fields: {', '.join(map(str, obj)) or 'none'})")
    val = obj[key]
    if isinstance(val, list) and len(val) == 1:
        val = val[0]
    if not isinstance(val, str) or not val.strip():
        raise DatasetError(f"{path}:{line}: field {key!r} must be a non-empty string, got {val!r:.60}")
    return val


def first_field(path: Path | str, line: int, obj: Any, keys: Sequence[str]) -> str:
    """The first of ``keys`` that ``obj`` has, as a non-empty string (a bare string row is taken as is)."""
    if isinstance(obj, str):
        if not obj.strip():
            raise DatasetError(f"{path}:{line}: empty text")
        return obj
    key = next((k for k in keys if isinstance(obj, dict) and k in obj), None)
    if key is None:
        got = ", ".join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
        raise DatasetError(f"{path}:{line}: no field named {' or '.join(keys)} (got {got or 'none'})")
    return text_field(path, line, obj, key)


def check_limit(limit: int | None) -> int | None:
    """``None`` (no limit) or a positive count; 0 or a negative number is an error, not "everything"."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise DatasetError(f"limit must be a positive number of items, got {limit!r}")
    return limit


def fingerprint(items: Iterable[Any]) -> str:
    """sha256 of the items' canonical JSON: identifies the exact data a vector was extracted from."""
    h = hashlib.sha256()
    for it in items:
        obj = asdict(it) if hasattr(it, "__dataclass_fields__") else it
        h.update(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()
