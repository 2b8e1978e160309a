"""YAML files into pydantic configs, with one-line errors that name the file or the bad field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import InputError

C = TypeVar("C", bound=BaseModel)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file gives ``{}``)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {str(p)!r} does not exist")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(f"{p}: not valid YAML ({e})") from None
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
        raise InputError(f"invalid {what} config at {loc}: {first['msg']}") from None
