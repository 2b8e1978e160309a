"""A minimal client for OpenAI-compatible chat-completions endpoints (vLLM, llama.cpp server, OpenAI...),
used by the LLM judge, the feature explainer and scorer and the triple rewriter. Errors name the URL.
:class:`Asker` puts concurrency, retries with backoff and an on-disk reply cache around any chat function."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ActlabError
from .runs import write_json

Chat = Callable[[list[dict[str, str]]], str]


class EndpointError(ActlabError):
    """The endpoint could not be reached or answered unusably (the URL is named). ``status`` is the HTTP status
    when the server answered, None when it could not be reached; ``retryable`` says whether trying again may help
    (unreachable, timeout, 429, 5xx)."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status, self.retryable = status, retryable


class OpenAIChat:
    """POST ``{base_url}/chat/completions``; the key comes from ``api_key`` or ``OPENAI_API_KEY`` (optional)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 60.0,
                 temperature: float = 0.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.timeout, self.temperature = timeout, temperature

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def __call__(self, messages: list[dict[str, str]], *, max_tokens: int = 256, top_logprobs: int = 0) -> str:
        """The reply's text; with ``top_logprobs`` > 0 the reply with its tokens' log-probabilities, encoded by
        :func:`encode_reply` (read it back with :func:`decode_reply`; a server that returns none gives a reply
        without them)."""
        req_body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature,
                                    "max_tokens": max_tokens}
        if top_logprobs:
            req_body.update(logprobs=True, top_logprobs=top_logprobs)
        body = json.dumps(req_body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise EndpointError(f"endpoint {self.url} answered HTTP {e.code}: {e.read()[:200]!r}", e.code,
                                e.code == 429 or e.code >= 500) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            raise EndpointError(f"endpoint {self.url} is unreachable: {getattr(e, 'reason', e)}",
                                retryable=True) from None
        except json.JSONDecodeError:
            raise EndpointError(f"endpoint {self.url} did not return JSON") from None
        try:
            content = payload["choices"][0]["message"]["content"]
            content = "" if content is None else str(content)  # a reasoning server may return no content
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"endpoint {self.url} returned no choices[0].message.content: {payload!r:.200}"
                                ) from None
        if not top_logprobs:
            return content
        try:  # OpenAI / vLLM / llama.cpp: choices[0].logprobs.content = [{token, logprob, top_logprobs: [...]}]
            steps = payload["choices"][0]["logprobs"]["content"]
            tokens = [(str(s["token"]), {str(t["token"]): float(t["logprob"]) for t in s.get("top_logprobs") or []}
                       | {str(s["token"]): float(s["logprob"])}) for s in steps]
        except (KeyError, IndexError, TypeError, ValueError):
            tokens = None  # the server does not return log-probabilities: scores that need them are left out
        return encode_reply(Reply(content, tokens))


@dataclass
class Reply:
    """A reply's text and, when the endpoint returned them, its generated tokens, each with the
    log-probabilities of its top alternatives (the chosen token included)."""

    content: str
    tokens: list[tuple[str, dict[str, float]]] | None = None


_ENVELOPE = "actlab.reply.v1"


def encode_reply(reply: Reply) -> str:
    """A reply with log-probabilities as one string (what :class:`Asker` passes on and caches)."""
    return json.dumps({_ENVELOPE: True, "content": reply.content,
                       "tokens": None if reply.tokens is None else [[t, top] for t, top in reply.tokens]})


def decode_reply(text: str) -> Reply:
    """The :class:`Reply` in ``text``: an :func:`encode_reply` string, or plain text (no log-probabilities)."""
    if text.startswith("{") and _ENVELOPE in text[:40]:
        try:
            d = json.loads(text)
            tokens = d["tokens"]
            return Reply(str(d["content"]), None if tokens is None else [(str(t), dict(top)) for t, top in tokens])
        except (ValueError, KeyError, TypeError):
            pass
    return Reply(text)


class ReplyCache:
    """Replies on disk, one JSON file per (asker name, messages), named by its sha256. The reply is cached, not
    what is parsed from it, so a better parser re-reads old replies."""

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = Path(folder)

    @staticmethod
    def key(name: str, msgs: list[dict[str, str]]) -> str:
        return hashlib.sha256(json.dumps([name, msgs], ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> str | None:
        p = self.folder / key[:2] / f"{key}.json"
        try:
            return str(json.loads(p.read_text(encoding="utf-8"))["reply"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, key: str, name: str, msgs: list[dict[str, str]], reply: str) -> None:
        write_json(self.folder / key[:2] / f"{key}.json", {"judge": name, "messages": msgs, "reply": reply})


class Asker:
    """Messages -> reply through ``chat``: ``concurrency`` requests in flight, a failed request retried
    ``retries`` times with exponential backoff (from ``backoff`` seconds) when the error may pass (unreachable,
    timeout, HTTP 429 or 5xx; the last error is raised with the URL in it), replies cached by (``name``,
    messages). ``requests`` counts what reached ``chat``."""

    def __init__(self, chat: Chat, name: str, *, cache: ReplyCache | None = None, concurrency: int = 16,
                 retries: int = 3, backoff: float = 0.5):
        self.chat, self.name, self.cache = chat, name, cache
        self.concurrency, self.retries, self.backoff = max(1, concurrency), retries, backoff
        self.requests = 0
        self._lock = threading.Lock()

    def ask(self, msgs: list[dict[str, str]]) -> tuple[str, bool]:
        """(reply, whether it came from the cache)."""
        key = ReplyCache.key(self.name, msgs)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                return hit, True
        for attempt in range(self.retries + 1):
            try:
                with self._lock:
                    self.requests += 1
                reply = self.chat(msgs)
                break
            except EndpointError as e:
                if not e.retryable or attempt == self.retries:
                    raise
                time.sleep(self.backoff * 2 ** attempt)
        if self.cache is not None:
            self.cache.put(key, self.name, msgs, reply)
        return reply, False

    def ask_all(self, many: Sequence[list[dict[str, str]]]) -> list[tuple[str, bool]]:
        """:meth:`ask` for each, concurrently, in order."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(self.ask, many))


def endpoint_asker(base_url: str, model: str, *, cache: ReplyCache | None = None, concurrency: int = 16,
                   retries: int = 3, timeout: float = 60.0, max_tokens: int = 256, top_logprobs: int = 0) -> Asker:
    """An :class:`Asker` over an OpenAI-compatible endpoint (named ``openai:MODEL@URL`` in its cache, with
    ``+logprobs:K`` when it asks for the top ``top_logprobs`` log-probabilities; its replies are then
    :func:`encode_reply` strings)."""
    client = OpenAIChat(base_url, model, timeout=timeout)
    name = f"openai:{model}@{client.base_url}" + (f"+logprobs:{top_logprobs}" if top_logprobs else "")
    return Asker(lambda m: client(m, max_tokens=max_tokens, top_logprobs=top_logprobs), name, cache=cache,
                 concurrency=concurrency, retries=retries)


def local_chat_asker(model: Any, *, cache: ReplyCache | None = None, max_new_tokens: int = 120) -> Asker:
    """An :class:`Asker` over a local HF chat model (a loaded :class:`actlab.Model`): the messages through its
    chat template, a greedy reply (named ``hf:NAME`` in its cache). One request at a time."""
    from .errors import InputError

    if getattr(model.tokenizer, "chat_template", None) is None:
        raise InputError(f"the local chat model {model.name!r} has no chat template")

    def chat(msgs: list[dict[str, str]]) -> str:
        system = "\n".join(m["content"] for m in msgs if m["role"] == "system") or None
        user = "\n".join(m["content"] for m in msgs if m["role"] != "system")
        prompt = model.chat_prompt(user, system=system)
        return model.generate_text(prompt, max_new_tokens=max_new_tokens, add_special_tokens=False)[0]

    return Asker(chat, f"hf:{model.name}", cache=cache, concurrency=1, retries=0)
