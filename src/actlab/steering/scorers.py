"""Scorers for open-ended steered generations: VADER sentiment and an LLM judge over any
OpenAI-compatible chat-completions endpoint. A scorer maps (prompts, texts) to one float per text."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Protocol

from ..errors import ActlabError


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


class JudgeError(ActlabError):
    """The LLM judge endpoint could not be reached or answered unusably (the URL is named)."""


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
        self.base_url = base_url.rstrip("/")
        self.model, self.behaviour, self.rubric = model, behaviour, rubric
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.timeout, self.temperature = timeout, temperature
        self.name = f"llm_judge:{model}"

    def chat(self, messages: list[dict[str, str]], *, max_tokens: int = 16) -> str:
        """One chat-completions call; returns the first choice's text."""
        url = f"{self.base_url}/chat/completions"
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise JudgeError(f"judge endpoint {url} answered HTTP {e.code}: {e.read()[:200]!r}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise JudgeError(f"judge endpoint {url} is unreachable: {getattr(e, 'reason', e)}") from None
        except json.JSONDecodeError:
            raise JudgeError(f"judge endpoint {url} did not return JSON") from None
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"judge endpoint {url} returned no choices[0].message.content: {payload!r:.200}") from None

    def __call__(self, prompts: Sequence[str], texts: Sequence[str]) -> list[float]:
        scores = []
        system = self.rubric.format(behaviour=self.behaviour)
        for p, t in zip(prompts, texts, strict=True):
            reply = self.chat([{"role": "system", "content": system},
                               {"role": "user", "content": f"Prompt:\n{p}\n\nResponse:\n{t}\n\nScore (0-10):"}])
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
