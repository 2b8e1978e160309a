"""Where a model's weights go: one device, or spread over several by accelerate (``device_map``), with an
optional memory budget per device (``max_memory``). One helper for the CLI flags and the configs (the LFP
pipeline's ``device_map``/``max_memory``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InputError, choices_hint

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_max_memory(spec: str | Mapping[Any, Any]) -> dict[Any, str]:
    """``0:20GiB,1:20GiB,cpu:64GiB`` (or a mapping such as ``{"0": "20GiB", "cpu": "64GiB"}``) -> accelerate's
    ``max_memory`` (GPU indices as ints)."""
    items = ([tuple(p.strip().partition(":")[::2]) for p in spec.split(",") if p.strip()] if isinstance(spec, str)
             else [(str(k), v) for k, v in spec.items()])
    out: dict[Any, str] = {}
    for dev, size in items:
        dev = str(dev).strip()
        if not isinstance(size, str) or not size.strip() or not (dev.isdigit() or dev in ("cpu", "mps", "disk")):
            raise InputError(f"cannot read max_memory {spec!r} at {dev!r}; use e.g. 0:20GiB,1:20GiB,cpu:64GiB")
        out[int(dev) if dev.isdigit() else dev] = size.strip()
    if not out:
        raise InputError(f"max_memory {spec!r} is empty; use e.g. 0:20GiB,cpu:64GiB")
    return out


def placement(device_map: str | None, max_memory: str | Mapping[Any, Any] | None) -> dict[str, Any]:
    """``load_model`` keywords for a placement (a memory budget implies ``device_map='auto'``); a bad value is
    a one-line error naming it and the valid choices."""
    kw: dict[str, Any] = {}
    if max_memory is not None:
        kw["max_memory"] = parse_max_memory(max_memory)
        device_map = device_map or "auto"
    if device_map is not None:
        if device_map not in DEVICE_MAPS:
            raise InputError(f"unknown device_map {device_map!r}." + choices_hint(device_map, DEVICE_MAPS))
        kw["device_map"] = device_map
    return kw
