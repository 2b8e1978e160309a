"""A minimal client for OpenAI-compatible chat-completions endpoints (vLLM, llama.cpp server, OpenAI...),
used by the LLM judge, the feature explainer and the triple rewriter. Errors name the URL."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from .errors import ActlabError


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

    def __call__(self, messages: list[dict[str, str]], *, max_tokens: int = 256) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": max_tokens}).encode()
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
            return "" if content is None else str(content)  # a reasoning server may return no content
        except (KeyError, IndexError, TypeError):
            raise EndpointError(f"endpoint {self.url} returned no choices[0].message.content: {payload!r:.200}"
                                ) from None
