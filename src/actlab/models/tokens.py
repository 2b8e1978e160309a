"""Token text as the tokenizer itself spaces it.

``tokenizer.decode([id])`` on one id loses spacing for SentencePiece vocabularies (Llama, TinyStories: the
word-boundary piece decodes to nothing on its own, so "HORRIBLE" + "▁" + "movie" reads "HORRIBLEmovie").
Decoding growing prefixes and taking the difference gives each token the text it adds in context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """The text each of ``ids`` adds to the decoded string, in context (spaces and newlines kept). A token
    that completes a multi-byte character gets the character; one that starts it gets an empty string."""
    ids = [int(i) for i in ids]
    if tokenizer is None:
        return [str(i) for i in ids]
    out: list[str] = []
    prev = ""
    for i in range(len(ids)):
        cur = tokenizer.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if cur.startswith(prev) and not prev.endswith("\ufffd"):
            out.append(cur[len(prev):])
        else:  # the prefix changed (an incomplete character resolved): fall back to the token on its own
            out.append(tokenizer.decode([ids[i]], skip_special_tokens=False, clean_up_tokenization_spaces=False))
        prev = cur
    return out
