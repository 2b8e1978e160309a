"""The sentiment-lexicon reward of the Learned-Feedback-Patterns study.

reward(text) = clip(sum of the VADER valences of its words / 5, -10, 10). Words are lower-cased runs of
letters and apostrophes; the lexicon is the one the vaderSentiment package ships (7,500 entries, valences in
[-4, 4]). No negation or intensifier rules: the study scores words independently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

WORD_RE = re.compile(r"[a-z']+")


@lru_cache(maxsize=1)
def vader_lexicon() -> dict[str, float]:
    """word -> valence, from the vaderSentiment package's own lexicon file."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return {k: float(v) for k, v in SentimentIntensityAnalyzer().lexicon.items()}


def words(text: str) -> list[str]:
    return WORD_RE.findall(text.lower())


def lexicon_reward(text: str, lexicon: dict[str, float] | None = None) -> float:
    lex = lexicon if lexicon is not None else vader_lexicon()
    return max(-10.0, min(10.0, sum(lex.get(w, 0.0) for w in words(text)) / 5.0))


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):  # conversational: [{"role": ..., "content": ...}, ...]
        return " ".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def lexicon_reward_fn(prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
    """TRL reward-function signature: one reward per completion (the prompt is not scored)."""
    return [lexicon_reward(_text(c)) for c in completions]
