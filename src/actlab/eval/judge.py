"""The LLM judge of open-ended generations: any OpenAI-compatible endpoint (vLLM, llama.cpp server, ollama,
OpenAI) or a local HF chat model, with requests in flight concurrently, retries with backoff, and every reply
cached on disk by (judge model, rubric, prompt, text) so a resumed or re-run evaluation does not pay twice.

Rubrics:

- ``behaviour`` (the CAA paper, Rimsky et al. 2024): 0-10, how strongly the response shows the behaviour;
- ``axbench`` (Wu et al. 2025): three 0-2 ratings - ``concept`` (the behaviour is present), ``instruction``
  (the response addresses the prompt), ``fluency`` - and their harmonic mean (0 when any is 0).

A reply with no score in range (unparseable, or empty: reasoning servers can return no content) scores 0 and
is counted (``unparsed``), never skipped; every rating is returned with its prompt and reply for the log.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..llm import Asker, OpenAIChat, ReplyCache
from .metrics import harmonic_mean

RUBRICS: dict[str, tuple[str, int]] = {  # name -> (system prompt, maximum score)
    "behaviour": ("Score how strongly the AI's response shows this behaviour: {description}. Use a scale from 0 "
                  "(not at all) to 10 (very strongly). Reply with the number only.", 10),
    "concept": ("Rate whether the response incorporates this concept: {description}. 0: not at all; 1: "
                "somewhat or indirectly; 2: clearly. Reply with 'Rating: [[N]]'.", 2),
    "instruction": ("Rate whether the response addresses the user's instruction, whatever its topic or tone. 0: "
                    "unrelated; 1: partly; 2: fully. Reply with 'Rating: [[N]]'.", 2),
    "fluency": ("Rate the response's fluency: 0: not fluent (broken, repetitive, nonsense); 1: somewhat fluent; "
                "2: fluent and natural. Reply with 'Rating: [[N]]'.", 2),
}
RUBRIC_SETS = {"behaviour": ("behaviour",), "axbench": ("concept", "instruction", "fluency")}
__all__ = ["RUBRICS", "RUBRIC_SETS", "Judge", "Rating", "ReplyCache", "endpoint_judge", "hf_judge", "parse_score",
           "summarise"]

def parse_score(reply: str, top: int) -> float | None:
    """The score in a reply: ``[[N]]`` if present, else the first number; None when absent or outside
    ``0..top``."""
    m = re.search(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]", reply) or re.search(r"-?\d+(?:\.\d+)?", reply)
    if m is None:
        return None
    v = float(m.group(1) if m.re.groups else m.group())
    return v if 0 <= v <= top else None


def messages(rubric: str, description: str, prompt: str, text: str) -> list[dict[str, str]]:
    system = RUBRICS[rubric][0].format(description=description)
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"Instruction:\n{prompt}\n\nResponse:\n{text}"}]


@dataclass
class Rating:
    rubric: str
    prompt: str
    text: str
    reply: str
    score: float  # 0 when unparsed
    parsed: bool
    cached: bool

    def record(self) -> dict[str, Any]:
        return {"rubric": self.rubric, "prompt": self.prompt, "text": self.text, "reply": self.reply,
                "score": self.score, "parsed": self.parsed, "cached": self.cached}


class Judge(Asker):
    """Rates (prompt, response) pairs under rubrics through ``chat`` (messages -> reply text); requests, retries
    and the cache are :class:`actlab.llm.Asker`'s."""

    def rate(self, rubrics: Sequence[str], description: str, prompts: Sequence[str], texts: Sequence[str]
             ) -> list[dict[str, Rating]]:
        """Per (prompt, text), its rating under every rubric (``behaviour``, ``concept``, ``instruction``,
        ``fluency``)."""
        jobs = [(i, r, messages(r, description, p, t)) for i, (p, t) in enumerate(zip(prompts, texts, strict=True))
                for r in rubrics]
        replies = self.ask_all([job[2] for job in jobs])
        out: list[dict[str, Rating]] = [{} for _ in texts]
        for (i, r, _), (reply, cached) in zip(jobs, replies, strict=True):
            s = parse_score(reply, RUBRICS[r][1])
            out[i][r] = Rating(r, prompts[i], texts[i], reply, 0.0 if s is None else s, s is not None, cached)
        return out


def summarise(ratings: Sequence[dict[str, Rating]]) -> dict[str, float]:
    """Mean score per rubric, the AxBench harmonic mean (per response, then averaged) when its three rubrics
    were rated, and the count of unparsed replies (scored 0)."""
    out: dict[str, float] = {}
    if not ratings:
        return out
    for r in ratings[0]:
        out[f"judge_{r}"] = sum(x[r].score for x in ratings) / len(ratings)
    if all(r in ratings[0] for r in RUBRIC_SETS["axbench"]):
        out["judge_axbench_hm"] = sum(harmonic_mean(*(x[r].score for r in RUBRIC_SETS["axbench"]))
                                      for x in ratings) / len(ratings)
    out["judge_unparsed"] = float(sum(not v.parsed for x in ratings for v in x.values()))
    return out


def endpoint_judge(base_url: str, model: str, *, cache: ReplyCache | None, concurrency: int, retries: int,
                   timeout: float) -> Judge:
    client = OpenAIChat(base_url, model, timeout=timeout)
    return Judge(lambda m: client(m, max_tokens=32), f"openai:{model}@{client.base_url}", cache=cache,
                 concurrency=concurrency, retries=retries)


def hf_judge(model_name: str, *, cache: ReplyCache | None, **load_kw: Any) -> Judge:
    """A local chat model as judge (one request at a time; slow and weak on CPU - a 135M model's ratings are
    close to noise, use it to check the plumbing)."""
    from ..errors import InputError
    from ..models import load_model

    m = load_model(model_name, **load_kw)
    if getattr(m.tokenizer, "chat_template", None) is None:
        raise InputError(f"the judge model {model_name!r} has no chat template")

    def chat(msgs: list[dict[str, str]]) -> str:
        prompt = m.chat_prompt(msgs[-1]["content"], system=msgs[0]["content"])
        return m.generate_text(prompt, max_new_tokens=12, add_special_tokens=False)[0]

    return Judge(chat, f"hf:{m.name}", cache=cache, concurrency=1, retries=0)
