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


def check_classifier(model: str, label: str | int = "positive") -> int:
    """The index of ``label`` in a sequence classifier's labels, from its config alone (cheap: run it before
    loading anything else, so a wrong name or label fails in the first second)."""
    from transformers import AutoConfig

    from ..errors import InputError

    try:
        config = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load the reward classifier {model!r}: {str(e).splitlines()[0]}") from None
    id2label = getattr(config, "id2label", None) or {}
    n = int(getattr(config, "num_labels", len(id2label)))
    if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
        index = int(label)
        if not 0 <= index < n:
            raise InputError(f"classifier label index {index} is out of range 0..{n - 1}")
        return index
    names = {str(v).lower(): int(k) for k, v in id2label.items()}
    if label.lower() not in names:
        raise InputError(f"the classifier {model!r} has no label {label!r}; its labels: "
                         f"{', '.join(str(v) for v in id2label.values())} (or an index)")
    return names[label.lower()]


class ClassifierReward:
    """A sequence classifier's logit for one label as the reward (the study's Appendix B: a DistilBERT IMDb
    sentiment model, the logit of "positive"). Any Hugging Face sequence-classification model (hub id or folder);
    ``label`` is a name from its ``config.id2label`` (case-insensitive) or an index. Scores the completion alone
    (as the lexicon reward does) or ``prompt + completion``. A callable with TRL's reward-function signature."""

    def __init__(self, model: str, label: str | int = "positive", *, text: str = "completion",
                 batch_size: int = 32, max_length: int = 512, device: str | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..errors import InputError

        if text not in ("completion", "prompt+completion"):
            raise InputError(f"unknown classifier text {text!r}; valid: completion, prompt+completion")
        self.index = check_classifier(model, label)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.model = AutoModelForSequenceClassification.from_pretrained(model)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot load the reward classifier {model!r}: {str(e).splitlines()[0]}") from None
        self.model.eval()
        self.device = torch.device(device) if device else torch.device("cpu")
        self.model.to(self.device)
        self.label = str(self.model.config.id2label.get(self.index, self.index))
        self.text, self.batch_size, self.max_length, self.name = text, batch_size, max_length, model
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.__name__ = "classifier_reward"  # TRL names reward functions by __name__

    def scores(self, texts: Sequence[str]) -> list[float]:
        """The label's logit for each text."""
        import torch

        out: list[float] = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[s:s + self.batch_size]), return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length).to(self.device)
            with torch.no_grad():
                out += self.model(**enc).logits[:, self.index].float().tolist()
        return out

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **_: Any) -> list[float]:
        texts = [_text(c) if self.text == "completion" else _text(p) + _text(c)
                 for p, c in zip(prompts, completions, strict=True)]
        return self.scores(texts)
