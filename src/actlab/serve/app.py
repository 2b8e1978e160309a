"""The playground's HTTP edge (Starlette): one page and a small JSON API over :class:`Playground`.

- ``GET /`` the page (self-contained: inline CSS and JS, no outside request);
- ``GET /api/info``; ``POST /api/generate`` (server-sent events: ``{"side", "text"}`` per piece, then
  ``{"done", "export"}``); ``POST /api/cancel``; ``POST /api/extract``; ``POST /api/lens``;
  ``POST /api/features``; ``GET /api/feature/{n}``.

Local only: a request whose ``Host`` header is not this server (a DNS-rebinding page) answers 403, and a POST
that is not ``application/json`` answers 415, so another site open in the same browser cannot make simple
cross-origin posts (a JSON post needs a CORS preflight, which this server never grants). No page may frame it
(``frame-ancestors 'none'``, ``X-Frame-Options: DENY``) and the page runs only this server's script (no inline
script). A body over 1 MB answers 413; JSON nested deeper than 32 levels, a string holding a lone UTF-16
surrogate, or a key an endpoint does not know answer 400.

A request the library refuses (an :class:`~actlab.errors.ActlabError`) answers 400 with ``{"error": msg}`` and
the server keeps running; anything else is a 500 with the message (and the traceback in the server log).
Model work runs in a thread pool and queues on the playground's lock.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..errors import ActlabError, InputError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .session import Playground

log = logging.getLogger("actlab")


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
MAX_BODY = 1 << 20  # bytes of a request body
MAX_DEPTH = 32  # nesting of a request's JSON

_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:]+)(?::(\d{1,5}))?")


def _host_name(host_header: str) -> str | None:
    """The name in a ``Host`` header (``name``, ``name:port``, ``[v6]:port``); None when it is not one (a port
    that is not a number, ``localhost:evil.example``, stray brackets)."""
    m = _HOST.fullmatch(host_header)
    return m.group(1) if m else None


class BodyTooLarge(InputError):
    """A request body over :data:`MAX_BODY` bytes (answered 413)."""


def parse_body(raw: bytes) -> Any:
    """A request body as JSON, refusing what would otherwise surface as a server error later: bytes that are not
    UTF-8, nesting deeper than :data:`MAX_DEPTH`, and strings holding a lone UTF-16 surrogate (JSON allows
    ``"\\ud800"``; no tokenizer or UTF-8 writer does)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("the request body is not UTF-8 text") from None
    depth, deepest, in_str, escaped = 0, 0, False, False
    for ch in text:  # before parsing: a deep document must not reach the recursive parser
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                raise InputError(f"the request body is nested deeper than {MAX_DEPTH} levels")
        elif ch in "]}":
            depth -= 1
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise InputError("the request body is not valid JSON") from None
    _check_strings(body)
    return body


def _check_strings(value: Any, where: str = "body") -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{where} holds a lone UTF-16 surrogate (not a character); send real text") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k, where)
            _check_strings(v, f"{where}.{k}" if isinstance(k, str) and k.isprintable() and len(k) < 40 else where)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_strings(v, f"{where}[{i}]")


def create_app(pg: Playground, *, allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES) -> Starlette:
    """The Starlette app; ``allowed_hosts`` are the names the Host header may carry (``"*"`` allows any)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from .page import page_html, script_js

    async def body_of(request: Request) -> Any:
        raw = bytearray()
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen <= MAX_BODY:
                raw += chunk
            elif seen > 4 * MAX_BODY:  # stop reading: the connection is closed after the answer
                break
        # a body a little over the limit is read to its end (and dropped) so the client gets the 413 answer
        # rather than a reset connection
        if seen > MAX_BODY:
            raise BodyTooLarge(f"the request body has more than {MAX_BODY:,} bytes; at most {MAX_BODY:,}")
        return parse_body(bytes(raw))

    def refused(request: Request) -> Response | None:
        header = request.headers.get("host", "").lower()
        host = _host_name(header)
        if "*" not in allowed_hosts and host not in allowed_hosts:
            return JSONResponse({"error": f"host {header!r} is not served here; open http://127.0.0.1:<port>/"},
                                status_code=403)
        if request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return JSONResponse({"error": f"send JSON (Content-Type application/json), not {ctype or 'nothing'!r}"},
                                    status_code=415)
        return None

    def answer(request: Request, fn: Callable[..., Any]) -> Any:
        async def run() -> Response:
            bad = refused(request)
            if bad is not None:
                return bad
            try:
                return await fn(request)
            except BodyTooLarge as e:
                return JSONResponse({"error": str(e)}, status_code=413)
            except ActlabError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            except Exception as e:  # a bug: say so, keep serving
                log.exception("playground request failed")
                return JSONResponse({"error": f"internal error ({type(e).__name__}: {e}); see the server log"},
                                    status_code=500)
        return run()

    def guarded(fn: Callable[..., Any]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            response = await answer(request, fn)
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response
        return handler

    async def index(request: Request) -> Response:
        return HTMLResponse(page_html(pg.info()))

    async def script(request: Request) -> Response:
        return Response(script_js(), media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    async def info(request: Request) -> Response:
        return JSONResponse(pg.info())

    async def generate(request: Request) -> Response:
        req = pg.parse_generate(await body_of(request))  # validated before the stream starts

        async def events() -> AsyncIterator[str]:
            # the worker thread holds the model's lock; if the client goes away (a closed tab) the finally
            # block sets the request's stop event and the worker ends after its current token
            queue, stop = pg.start_generation(req)
            try:
                while (ev := await run_in_threadpool(queue.get)) is not None:
                    if isinstance(ev, ActlabError):
                        ev = {"error": str(ev)}
                    elif isinstance(ev, BaseException):
                        log.error("playground generation failed", exc_info=ev)
                        ev = {"error": f"internal error ({type(ev).__name__}: {ev}); see the server log"}
                    yield f"data: {json.dumps(ev, ensure_ascii=False)}\n\n"
            finally:
                stop.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def cancel(request: Request) -> Response:
        body = await body_of(request)
        if body != {}:
            raise InputError("cancel takes an empty JSON object, {}")
        return JSONResponse({"cancelled": pg.cancel_current()})

    async def extract(request: Request) -> Response:
        body = await body_of(request)
        return JSONResponse(await run_in_threadpool(pg.extract, body))

    async def lens(request: Request) -> Response:
        body = await body_of(request)
        return JSONResponse(await run_in_threadpool(pg.lens, body))

    async def features(request: Request) -> Response:
        body = await body_of(request)
        return JSONResponse(await run_in_threadpool(pg.token_features, body))

    async def feature(request: Request) -> Response:
        from ..report.features import feature_card

        raw = request.path_params["n"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:  # '²' is a digit to str.isdigit, not to int()
            raise InputError(f"feature must be a number, got {raw[:20]!r}")
        dash = await run_in_threadpool(pg.feature, int(raw))
        return JSONResponse({"dashboard": dash, "html": feature_card(dash["features"][0])})

    routes = [Route("/", guarded(index)), Route("/playground.js", guarded(script)), Route("/api/info", guarded(info)),
              Route("/api/generate", guarded(generate), methods=["POST"]),
              Route("/api/cancel", guarded(cancel), methods=["POST"]),
              Route("/api/extract", guarded(extract), methods=["POST"]),
              Route("/api/lens", guarded(lens), methods=["POST"]),
              Route("/api/features", guarded(features), methods=["POST"]),
              Route("/api/feature/{n}", guarded(feature))]
    return Starlette(routes=routes)


# the page may talk only to this server and run only its script; no style, image or font from anywhere else; no
# page may frame it
CSP = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(pg: Playground, *, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the playground until interrupted (uvicorn, one process: the model is in this process's memory)."""
    import uvicorn

    allowed = LOOPBACK_NAMES if is_loopback(host) else ("*",)  # bound to the network on purpose: any name reaching it
    uvicorn.run(create_app(pg, allowed_hosts=allowed), host=host, port=port, log_level="warning", access_log=False)
