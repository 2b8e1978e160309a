"""Scorers for open-ended steered generations: VADER sentiment and an LLM judge over any
OpenAI-compatible chat-completions endpoint. A scorer maps (prompts, texts) to one float per text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from ..errors import ActlabError
from ..llm import EndpointError, OpenAIChat


class Scorer(Protocol):
    name: str

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> list[float]: ...


class VaderScorer:
    """VADER compound sentiment in [-1, 1] (the lexicon ships with the vaderSentiment package)."""

    name = "vader_compound"

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError as e:  # pragma: no cover - it is a dependency
            raise ActlabError("the VADER scorer needs the vaderSentiment package (pip install vaderSentiment)") from e
        self._sia = SentimentIntensityAnalyzer()

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> list[float]:
        return [float(self._sia.polarity_scores(t)["compound"]) for t in texts]


JudgeError = EndpointError  # the judge's endpoint errors (kept as a name for callers)


DEFAULT_RUBRIC = (
    "You rate how strongly an AI response shows the behaviour '{behaviour}'. Reply with one number from 0 "
    "(not at all) to 10 (extremely), and nothing else."
)


class LLMJudge:
    """Scores each response by asking a model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``base_url`` is e.g. ``http://localhost:8000/v1``; the API key is read from ``api_key`` or the
    ``OPENAI_API_KEY`` environment variable (optional for local servers). The reply's first number is the score.
    """

    def __init__(self, base_url: str, model: str, *, behaviour: str = "the target behaviour",
                 rubric: str = DEFAULT_RUBRIC, api_key: str | None = None, timeout: float = 60.0,
                 temperature: float = 0.0):
        self.client = OpenAIChat(base_url, model, api_key=api_key, timeout=timeout, temperature=temperature)
        self.base_url, self.model, self.behaviour, self.rubric = self.client.base_url, model, behaviour, rubric
        self.name = f"llm_judge:{model}"

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> list[float]:
        scores = []
        system = self.rubric.format(behaviour=self.behaviour)
        for p, t in zip(prompts, texts, strict=True):
            reply = self.client([{"role": "system", "content": system},
                               {"role": "user", "content": f"Prompt:\n{p}\n\nResponse:\n{t}\n\nScore (0-10):"}],
                                max_tokens=16)
            m = re.search(r"-?\d+(?:\.\d+)?", reply)
            if m is None:
                raise JudgeError(f"judge {self.model} at {self.base_url} gave no number: {reply!r:.100}")
            scores.append(float(m.group()))
        return scores


def get_scorer(name: str, **kw: object) -> Scorer:
    """``'vader'`` or ``'judge'`` (with base_url=..., model=...)."""
    if name == "vader":
        return VaderScorer()
    if name == "judge":
        return LLMJudge(**kw)  # type: ignore[arg-type]
    raise ActlabError(f"unknown scorer {name!r}; valid: vader, judge")
