"""Preference pairs for DPO: HH-RLHF rows (``chosen``/``rejected`` full dialogues, JSONL or .jsonl.gz; the
prompt is their shared text up to the last ``"\\n\\nAssistant:"``) or explicit ``prompt``/``chosen``/``rejected``
JSONL (e.g. toxic-dpo). ``swap=True`` exchanges preferred and dispreferred answers."""

from __future__ import annotations

import os

from .readers import DatasetError, check_limit, rows

ASSISTANT = "\n\nAssistant:"


def split_dialogue(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """HH-RLHF: (prompt, chosen answer, rejected answer), split at the last shared assistant turn."""
    k = chosen.rfind(ASSISTANT)
    if k < 0 or rejected[: k + len(ASSISTANT)] != chosen[: k + len(ASSISTANT)]:
        return None
    cut = k + len(ASSISTANT)
    return chosen[:cut], chosen[cut:], rejected[cut:]


def load_preferences(path: str | os.PathLike[str], *, swap: bool = False, limit: int | None = None
                     ) -> list[dict[str, str]]:
    """Rows ``{"prompt", "chosen", "rejected"}`` (see module docstring)."""
    limit = check_limit(limit)
    out: list[dict[str, str]] = []
    skipped = 0
    for n, obj in rows(path, what="preference file"):
        if not isinstance(obj, dict):
            raise DatasetError(f"{path}:{n}: expected an object, got {type(obj).__name__}")
        if "prompt" in obj:
            missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(obj.get(k), str)]
            if missing:
                raise DatasetError(f"{path}:{n}: missing or non-string {', '.join(missing)}")
            row = {"prompt": obj["prompt"], "chosen": obj["chosen"], "rejected": obj["rejected"]}
        elif isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str):
            parts = split_dialogue(obj["chosen"], obj["rejected"])
            if parts is None:
                skipped += 1
                continue
            row = dict(zip(("prompt", "chosen", "rejected"), parts, strict=True))
        else:
            raise DatasetError(f"{path}:{n}: expected prompt/chosen/rejected or HH-RLHF chosen/rejected fields")
        if swap:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        out.append(row)
        if limit and len(out) >= limit:
            break
    if not out:
        raise DatasetError(f"{path}: no usable preference pairs ({skipped} dialogues did not share a prompt)")
    return out
