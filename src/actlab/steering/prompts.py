"""Building prompts (chat template or plain) and locating the token positions steering reads from.

Reading positions (extraction):

- ``"answer"``: the answer-letter token of an A/B item appended after the prompt (CAA reads ``A`` in
  ``(A)``);
- ``"last"``: the last token; ``"last:k"`` the last ``k`` tokens (e.g. refusal candidates without a chat
  template);
- ``"eoi"``: the end-of-instruction tokens, i.e. the chat template's suffix after the user message
  (``<|im_end|>\\n<|im_start|>assistant\\n`` for ChatML), averaged; ``"eoi:-1"`` (or any index) picks one;
- ``"mean"``: the mean over all real tokens of the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import InputError

if TYPE_CHECKING:
    from ..models.model import Model

READ_POLICIES = ("answer", "last", "eoi", "mean")
_PLACEHOLDER = "\x00ACTLAB_USER_MESSAGE\x00"


@dataclass(frozen=True)
class PromptStyle:
    """How prompts are built: through the chat template (``chat=True``) or as plain text."""

    chat: bool = True
    system: str | None = None
    plain_answer_prefix: str = "\n\nAnswer: "
    history: tuple[tuple[str, str], ...] = ()  # earlier (user, assistant) turns: few-shot examples
    suffix: str = ""  # plain text only: what follows the user message (the refusal study's "\n" template)

    def add_special_tokens(self) -> bool:
        """Templated text already holds its special tokens; plain text gets the tokenizer's (e.g. BOS)."""
        return not self.chat


def resolve_style(model: Model, chat: bool | None = None, system: str | None = None) -> PromptStyle:
    """``chat=None`` means: use the chat template when the tokenizer has one."""
    has_template = getattr(model.tokenizer, "chat_template", None) is not None
    if chat is None:
        chat = has_template
    if chat and not has_template:
        raise InputError(f"model {model.name!r} has no chat template; use chat=False (--no-chat)")
    return PromptStyle(chat=chat, system=system)


def format_prompt(model: Model, user: str, style: PromptStyle) -> str:
    """The prompt a model sees for one user message (generation prompt included when chatting)."""
    if not user.strip():
        raise InputError("empty prompt")
    if style.chat:
        turns = [{"role": role, "content": text} for q, a in style.history
                 for role, text in (("user", q), ("assistant", a))]
        return model.chat_prompt(user, system=style.system, history=turns)
    # plain text: an instruction and the examples go before the prompt, as a model without a template reads them
    shots = [f"{q}{style.plain_answer_prefix}{a}" for q, a in style.history]
    return "\n\n".join([*([style.system] if style.system else []), *shots, user]) + style.suffix


def with_answer(model: Model, question: str, answer: str, style: PromptStyle) -> str:
    """An A/B question followed by the start of the assistant's answer (e.g. ``"(A"`` or ``"(A)"``)."""
    base = format_prompt(model, question, style)
    return base + answer if style.chat else base + style.plain_answer_prefix + answer


def eoi_suffix(model: Model, style: PromptStyle) -> str:
    """The text the chat template puts after the user message (in plain mode: the style's ``suffix``, usually
    empty)."""
    if not style.chat:
        return style.suffix
    full = model.chat_prompt(_PLACEHOLDER, system=style.system)
    return full[full.index(_PLACEHOLDER) + len(_PLACEHOLDER):]


def token_spans(model: Model, text: str, add_special_tokens: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of ``text`` and each token's character span."""
    tok = model.tokenizer
    enc = tok(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def char_to_token(spans: list[tuple[int, int]], char: int) -> int:
    """Index of the token covering character ``char`` (the last token starting at or before it)."""
    best = None
    for i, (s, e) in enumerate(spans):
        if s == e:  # special tokens added by the tokenizer have empty spans
            continue
        if s <= char < e:
            return i
        if s <= char:
            best = i
    if best is None:
        raise InputError(f"no token covers character {char}")
    return best


def eoi_first_token(model: Model, text: str, style: PromptStyle,
                    spans: list[tuple[int, int]] | None = None) -> int:
    """Index of the first end-of-instruction token of a templated prompt: the token covering the first
    character of the chat template's suffix after the user message. This is the one ``eoi`` boundary: reading
    policies ``eoi``/``eoi:k`` read from it, and steering ``from_eoi`` starts at it (the steering side finds
    it again by :func:`eoi_token_ids`, the suffix's tokens as they appear in a prompt)."""
    suffix = eoi_suffix(model, style)
    if not suffix:
        raise InputError("position policy 'eoi' needs the chat template (end-of-instruction tokens)")
    if not text.endswith(suffix):
        raise InputError("the prompt does not end with the chat template's end-of-instruction suffix")
    if spans is None:
        spans = token_spans(model, text, style.add_special_tokens())[1]
    return char_to_token(spans, len(text) - len(suffix))


def eoi_token_ids(model: Model, style: PromptStyle | None = None) -> list[int]:
    """The end-of-instruction tokens as they appear at the end of a templated prompt (found with
    :func:`eoi_first_token`, so tokenization across the message boundary is accounted for)."""
    style = style or PromptStyle(chat=True)
    text = format_prompt(model, "Hello.", style)
    ids, spans = token_spans(model, text, style.add_special_tokens())
    out = ids[eoi_first_token(model, text, style, spans):]
    if not out:
        raise InputError("the chat template has an empty end-of-instruction suffix")
    return out


def check_read_policy(policy: str) -> str:
    """A reading position policy's syntax (``answer``, ``last``, ``last:K``, ``eoi``, ``eoi:K``, ``mean``), before
    any model loads."""
    import re

    if not isinstance(policy, str) or not re.fullmatch(r"answer|last|mean|eoi|eoi:-?\d+|last:\d+", policy):
        raise InputError(f"unknown read position policy {policy!r}; valid: {', '.join(READ_POLICIES)}, "
                         "eoi:<index>, last:<count>")
    return policy


def read_positions(model: Model, text: str, policy: str, style: PromptStyle, *, answer: str | None = None
                   ) -> list[int]:
    """Token indices (over the text's tokens) that a read policy selects."""
    ids, spans = token_spans(model, text, style.add_special_tokens())
    n = len(ids)
    if policy == "last":
        return [n - 1]
    if policy.startswith("last:"):  # the last k tokens (candidate positions when there is no chat template)
        try:
            k = int(policy.split(":", 1)[1])
        except ValueError:
            raise InputError(f"cannot read {policy!r}; use last:K with K a number of tokens, e.g. last:3") from None
        if not 1 <= k <= n:
            raise InputError(f"{policy!r}: the prompt has {n} tokens; K must be in 1..{n}")
        return list(range(n - k, n))
    if policy == "mean":
        return list(range(n))
    if policy == "answer":
        if answer is None:
            raise InputError("position policy 'answer' needs an A/B answer appended to the prompt")
        from ..data.behaviour import answer_label

        label = answer_label(answer)
        start = text.rindex(answer)
        return [char_to_token(spans, start + answer.index(label))]
    if policy == "eoi" or policy.startswith("eoi:"):
        first = eoi_first_token(model, text, style, spans)
        positions = list(range(first, n))
        if policy == "eoi":
            return positions
        k = int(policy.split(":", 1)[1])
        try:
            return [positions[k]]
        except IndexError:
            raise InputError(f"'{policy}': there are only {len(positions)} end-of-instruction tokens") from None
    raise InputError(f"unknown read position policy {policy!r}; valid: {', '.join(READ_POLICIES)}, eoi:<index>, "
                     "last:<count>")
