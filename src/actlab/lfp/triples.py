"""Contrastive triples: the same passage with a positive, a neutral and a negative word (sentiment task),
or given/generated positive-neutral-negative rewrites (dialogue tasks).

Sentiment (the study's construction): take IMDb passages containing a lexicon word, and replace that word
with a randomly drawn positive word, a neutral word (not in the lexicon) and a negative word; the character
span of the substituted word is recorded so its tokens can be found later.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.triples import load_triples
from ..errors import InputError
from ..llm import OpenAIChat

NEUTRAL_WORDS = (
    "ordinary", "usual", "particular", "specific", "typical", "average", "certain", "regular", "standard",
    "general", "common", "normal", "plain", "simple", "basic", "medium", "moderate", "routine", "modern",
    "recent", "local", "long", "short", "old", "new", "early", "late", "small", "large", "main",
)


AGREEMENT_MIN_VALENCE = 0.5  # lexicon words weaker than this are not scored for agreement


def split_lexicon(lexicon: dict[str, float], heldout_fraction: float, seed: int) -> dict[str, list[str]]:
    """A seeded random split of the scoreable lexicon words (alphabetic, |valence| >= 0.5) into words the probe
    may be trained on and words held out from training for the agreement test (the study's Table 4 scores
    words; scoring the words the probe was fitted on would be in-sample)."""
    import random

    if not 0 < heldout_fraction < 1:
        raise InputError(f"heldout_fraction must be between 0 and 1 (exclusive), got {heldout_fraction}")
    words = sorted(w for w, v in lexicon.items() if w.isalpha() and abs(v) >= AGREEMENT_MIN_VALENCE)
    rng = random.Random(seed)
    rng.shuffle(words)
    n_out = round(len(words) * heldout_fraction)
    return {"heldout": sorted(words[:n_out]), "train": sorted(words[n_out:])}


def substitute_words(lexicon: dict[str, float], min_valence: float) -> tuple[list[str], list[str], list[str]]:
    """Positive, neutral and negative substitutes (alphabetic words; neutral ones absent from the lexicon)."""
    pos = sorted(w for w, v in lexicon.items() if v >= min_valence and w.isalpha() and len(w) > 2)
    neg = sorted(w for w, v in lexicon.items() if v <= -min_valence and w.isalpha() and len(w) > 2)
    neu = [w for w in NEUTRAL_WORDS if w not in lexicon]
    return pos, neu, neg


def substitute(window: Sequence[str], j: int, word: str) -> tuple[str, list[int]]:
    """The window's words joined by spaces with word ``j``'s letters replaced by ``word`` (punctuation around it
    kept), and the character span of ``word`` in the result."""
    core = re.sub(r"[^A-Za-z']", "", window[j])
    prefix, _, suffix = window[j].partition(core) if core else ("", "", "")
    left = " ".join(window[:j])
    left = left + " " if left else ""
    start = len(left) + len(prefix)
    text = left + prefix + word + suffix + (" " if j + 1 < len(window) else "") + " ".join(window[j + 1:])
    return text, [start, start + len(word)]


def word_contexts(texts: Sequence[str], words: Sequence[str], *, per_word: int, window_words: int, seed: int = 0,
                  exclude: set[int] = frozenset()) -> dict[str, list[tuple[str, list[int]]]]:
    """Up to ``per_word`` real passages per word: a window of ``window_words`` words around an occurrence of the
    word (as a whole word, any case) in ``texts`` (indices in ``exclude`` skipped), with the word's character
    span; occurrences drawn at random (seeded) when there are more. Words found nowhere are absent."""
    wanted = set(words)
    found: dict[str, list[tuple[int, int]]] = {}
    for ti, text in enumerate(texts):
        if ti in exclude:
            continue
        ws = text.replace("<br />", " ").split()
        for i, w in enumerate(ws):
            core = re.sub(r"[^a-z']", "", w.lower())
            if core in wanted and re.sub(r"[^A-Za-z']", "", w).lower() == core:
                found.setdefault(core, []).append((ti, i))
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, list[int]]]] = {}
    for word in sorted(found):
        hits = found[word]
        picks = hits if len(hits) <= per_word else rng.sample(hits, per_word)
        ctxs = []
        for ti, i in picks:
            ws = texts[ti].replace("<br />", " ").split()
            lo = max(0, i - window_words // 2)
            window = ws[lo:lo + window_words]
            core = re.sub(r"[^A-Za-z']", "", window[i - lo])
            ctxs.append(substitute(window, i - lo, core))
        out[word] = ctxs
    return out


def lexicon_triples(texts: Sequence[str], lexicon: dict[str, float], *, n: int, window_words: int = 40,
                    min_valence: float = 1.5, seed: int = 0, allowed: set[str] | None = None
                    ) -> list[dict[str, Any]]:
    """Up to ``n`` triples from ``texts`` (see module docstring); substitute words are drawn from ``allowed``
    only when given (the training side of :func:`split_lexicon`)."""
    rng = random.Random(seed)
    pool = lexicon if allowed is None else {w: v for w, v in lexicon.items() if w in allowed}
    pos, _, neg = substitute_words(pool, min_valence)
    _, neu, _ = substitute_words(lexicon, min_valence)  # neutral: absent from the whole lexicon, held-out side too
    if not pos or not neg or not neu:
        raise InputError("the lexicon has no positive, neutral or negative substitute words")
    out: list[dict[str, Any]] = []
    for ti, text in enumerate(texts):
        ws = text.replace("<br />", " ").split()
        hits = [i for i, w in enumerate(ws) if lexicon.get(re.sub(r"[^a-z']", "", w.lower()), 0.0) != 0.0]
        if not hits:
            continue
        i = hits[rng.randrange(len(hits))]
        lo = max(0, i - window_words // 2)
        window = ws[lo:lo + window_words]
        j = i - lo
        core = re.sub(r"[^A-Za-z']", "", window[j])
        original = core.lower()
        variants = {}
        subs = {"positive": rng.choice(pos), "neutral": rng.choice(neu), "negative": rng.choice(neg)}
        for kind, word in subs.items():
            text, span = substitute(window, j, word)
            variants[kind] = {"text": text, "word": word, "span": span}
        out.append({"source_text": ti, "original_word": original, "original_valence": lexicon[original],
                    **variants})
        if len(out) >= n:
            break
    if not out:
        raise InputError("no passage contains a lexicon word")
    return out


def file_triples(path: str | Path) -> list[dict[str, Any]]:
    """Triples from JSONL rows ``{"positive", "neutral", "negative"}`` (whole-input deltas)."""
    return load_triples(path)


REWRITE_PROMPT = (
    "Rewrite the text below three times, changing as little as possible: once so that it shows strongly "
    "{positive}, once neutrally, once so that it shows strongly {negative}. Answer with JSON only: "
    '{{"positive": "...", "neutral": "...", "negative": "..."}}\n\nText:\n{text}'
)


def llm_triples(texts: Sequence[str], client: OpenAIChat, *, positive: str, negative: str, n: int
                ) -> list[dict[str, Any]]:
    """Triples written by a rewriting LLM behind an OpenAI-compatible endpoint."""
    out = []
    for t in texts[:n]:
        reply = client([{"role": "user", "content": REWRITE_PROMPT.format(text=t, positive=positive,
                                                                          negative=negative)}], max_tokens=800)
        m = re.search(r"\{.*\}", reply, re.S)
        try:
            obj = json.loads(m.group()) if m else None
        except json.JSONDecodeError:
            obj = None
        if not obj or not all(isinstance(obj.get(k), str) for k in ("positive", "neutral", "negative")):
            continue
        out.append({k: {"text": obj[k], "span": None} for k in ("positive", "neutral", "negative")})
    if not out:
        raise InputError(f"the rewriter at {client.url} produced no usable triple")
    return out
