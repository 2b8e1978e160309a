"""Feature explainers: a model looks at a feature's top-activating contexts, writes a one-sentence
explanation and says whether the feature is related to the fine-tuning task. Pluggable: any
OpenAI-compatible endpoint, or a local HF chat model loaded with actlab."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

from ..errors import InputError
from ..llm import OpenAIChat

PROMPT = (
    "A feature of a language model fires on the token marked [[like this]] in each snippet below.\n\n"
    "{snippets}\n\nIn one sentence, what does the feature detect? Then say whether it is related to "
    "{task}. Answer in exactly two lines:\nEXPLANATION: <one sentence>\nRELATED: yes or no"
)


def format_snippets(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    for k, r in enumerate(rows, 1):
        toks = list(r["tokens"])
        h = r["highlight"]
        if 0 <= h < len(toks):
            toks[h] = f"[[{toks[h]}]]"
        lines.append(f"{k}. {''.join(toks).strip()}")
    return "\n".join(lines)


def parse_reply(reply: str) -> tuple[str, bool]:
    m = re.search(r"EXPLANATION:\s*(.+)", reply)
    explanation = (m.group(1) if m else reply.strip().splitlines()[0] if reply.strip() else "").strip()
    r = re.search(r"RELATED:\s*(yes|no)", reply, re.I)
    return explanation, bool(r and r.group(1).lower() == "yes")


class Explainer(Protocol):
    name: str

    def explain(self, rows: Sequence[dict[str, Any]], task: str) -> tuple[str, bool]: ...


class OpenAIExplainer:
    def __init__(self, base_url: str, model: str, **kw: Any):
        self.client = OpenAIChat(base_url, model, **kw)
        self.name = f"openai:{model}@{base_url}"

    def explain(self, rows: Sequence[dict[str, Any]], task: str) -> tuple[str, bool]:
        return parse_reply(self.client([{"role": "user", "content": PROMPT.format(
            snippets=format_snippets(rows), task=task)}], max_tokens=120))


class HFExplainer:
    """A local chat model (e.g. SmolLM2-Instruct) as the explainer."""

    def __init__(self, model_name: str, **load_kw: Any):
        from ..models import load_model

        self.model = load_model(model_name, **load_kw)
        if getattr(self.model.tokenizer, "chat_template", None) is None:
            raise InputError(f"the explainer model {model_name!r} has no chat template")
        self.name = f"hf:{self.model.name}"

    def explain(self, rows: Sequence[dict[str, Any]], task: str) -> tuple[str, bool]:
        prompt = self.model.chat_prompt(PROMPT.format(snippets=format_snippets(rows), task=task))
        reply = self.model.generate_text(prompt, max_new_tokens=80, add_special_tokens=False)[0]
        return parse_reply(reply)


def make_explainer(kind: str, *, base_url: str | None, model: str | None) -> Explainer | None:
    if kind == "none":
        return None
    if kind == "openai":
        if not base_url or not model:
            raise InputError("explainer kind 'openai' needs explainer.base_url and explainer.model")
        return OpenAIExplainer(base_url, model)
    if kind == "hf":
        if not model:
            raise InputError("explainer kind 'hf' needs explainer.model (a local chat model)")
        return HFExplainer(model)
    raise InputError(f"unknown explainer kind {kind!r}; valid: openai, hf, none")
