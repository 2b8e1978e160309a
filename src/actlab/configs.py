"""YAML files into pydantic configs, with one-line errors that name the file or the bad field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InputError, choices_hint

C = TypeVar("C", bound=BaseModel)


class StrictConfig(BaseModel):
    """A config section: a misspelt or unknown key is an error (with a did-you-mean), never silently ignored; a
    number that is NaN or infinite is an error too (a YAML ``.nan`` would otherwise flow into training)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


SEED_MAX = 2**32 - 1  # what torch, numpy and Python all accept as a seed


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file gives ``{}``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not a YAML text file (byte {e.start} is not UTF-8)") from None
    if "\x00" in text:
        raise InputError(f"{p}: not a YAML text file (it holds NUL bytes)")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise InputError(f"{p}: the YAML is nested too deeply to be a config") from None
    if not isinstance(raw, dict):
        raise InputError(f"{p}: the top level must be a mapping")
    return raw


def build_config(cls: type[C], raw: dict[str, Any], what: str) -> C:
    """``cls(**raw)``, with pydantic's first complaint turned into ``invalid {what} config at field: msg``."""
    try:
        return cls(**raw)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "config"
        if first.get("type") == "extra_forbidden":
            key = str(first["loc"][-1])
            section = _section(cls, first["loc"][:-1])
            valid = list(section.model_fields) if section is not None else []
            raise InputError(f"unknown key {loc!r} in the {what} config." + choices_hint(key, valid)) from None
        got = first.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, (dict, list)) else ""
        raise InputError(f"invalid {what} config at {loc}: {first['msg']}{shown}") from None


def _section(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class a pydantic error location points into (for the valid keys of a nested section)."""
    import typing

    cur: Any = cls
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        for arg in (ann, *typing.get_args(ann)):
            inner = [a for a in typing.get_args(arg)] if typing.get_origin(arg) is list else [arg]
            found = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if found is not None:
                cur = found
                break
        else:
            return None
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, nested mappings merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_preset_config(path: str | Path, cls: type[C], presets: dict[str, dict[str, Any]], what: str,
                       path_keys: tuple[str, ...]) -> C:
    """A pipeline config from YAML: ``preset: NAME`` supplies defaults the file overrides; the values of
    ``path_keys`` that are relative resolve against the config file's folder."""
    p = Path(path)
    raw = read_yaml_mapping(p)
    preset = raw.pop("preset", None)
    if preset is not None:
        if preset not in presets:
            raise InputError(f"unknown preset {preset!r}; valid: {', '.join(presets)}")
        raw = merged(presets[preset], raw)
    for key in path_keys:
        if raw.get(key) and not Path(raw[key]).is_absolute():
            raw[key] = str((p.parent / raw[key]).resolve())
    return build_config(cls, raw, what)


def preset_yaml(presets: dict[str, Any], name: str, **fields: Any) -> str:
    """A starting config naming preset ``name`` and ``fields``, as YAML (lines never folded)."""
    if name not in presets:
        raise InputError(f"unknown preset {name!r}; valid: {', '.join(presets)}")
    return yaml.safe_dump({"preset": name, **fields}, sort_keys=False, width=1 << 30)
