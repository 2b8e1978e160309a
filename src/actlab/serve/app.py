"""The playground's HTTP edge (Starlette): one page and a small JSON API over :class:`Playground`.

- ``GET /`` the page (self-contained: inline CSS and JS, no outside request);
- ``GET /api/info``; ``POST /api/generate`` (server-sent events: ``{"side", "text"}`` per piece, then
  ``{"done", "export"}``); ``POST /api/cancel``; ``POST /api/extract``; ``POST /api/lens``;
  ``POST /api/features``; ``GET /api/feature/{n}``.

Local only: a request whose ``Host`` header is not this server (a DNS-rebinding page) answers 403, and a POST
that is not ``application/json`` answers 415, so another site open in the same browser cannot make simple
cross-origin posts (a JSON post needs a CORS preflight, which this server never grants).

A request the library refuses (an :class:`~actlab.errors.ActlabError`) answers 400 with ``{"error": msg}`` and
the server keeps running; anything else is a 500 with the message (and the traceback in the server log).
Model work runs in a thread pool and queues on the playground's lock.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..errors import ActlabError, InputError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from .session import Playground

log = logging.getLogger("actlab")


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):  # [::1]:8765
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def create_app(pg: Playground, *, allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES) -> Starlette:
    """The Starlette app; ``allowed_hosts`` are the names the Host header may carry (``"*"`` allows any)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from .page import page_html

    async def body_of(request: Request) -> Any:
        try:
            return await request.json()
        except (ValueError, UnicodeDecodeError):
            raise InputError("the request body is not valid JSON") from None

    def refused(request: Request) -> Response | None:
        host = _host_name(request.headers.get("host", "").lower())
        if "*" not in allowed_hosts and host not in allowed_hosts:
            return JSONResponse({"error": f"host {host!r} is not served here; open http://127.0.0.1:<port>/"},
                                status_code=403)
        if request.method == "POST":
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return JSONResponse({"error": f"send JSON (Content-Type application/json), not {ctype or 'nothing'!r}"},
                                    status_code=415)
        return None

    def guarded(fn: Callable[..., Any]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            bad = refused(request)
            if bad is not None:
                return bad
            try:
                return await fn(request)
            except ActlabError as e:
                return JSONResponse({"error": str(e)}, status_code=400)
            except Exception as e:  # a bug: say so, keep serving
                log.exception("playground request failed")
                return JSONResponse({"error": f"internal error ({type(e).__name__}: {e}); see the server log"},
                                    status_code=500)
        return handler

    async def index(request: Request) -> Response:
        return HTMLResponse(page_html(pg.info()), headers={"Content-Security-Policy": CSP})

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
        if not raw.isdigit():
            raise InputError(f"feature must be a number, got {raw!r}")
        dash = await run_in_threadpool(pg.feature, int(raw))
        return JSONResponse({"dashboard": dash, "html": feature_card(dash["features"][0])})

    routes = [Route("/", guarded(index)), Route("/api/info", guarded(info)),
              Route("/api/generate", guarded(generate), methods=["POST"]),
              Route("/api/cancel", guarded(cancel), methods=["POST"]),
              Route("/api/extract", guarded(extract), methods=["POST"]),
              Route("/api/lens", guarded(lens), methods=["POST"]),
              Route("/api/features", guarded(features), methods=["POST"]),
              Route("/api/feature/{n}", guarded(feature))]
    return Starlette(routes=routes)


# the page may talk only to this server; no script, style, image or font from anywhere else
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src data:; base-uri 'none'; form-action 'none'")


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
