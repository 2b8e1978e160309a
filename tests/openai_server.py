"""A small local server speaking the OpenAI chat-completions protocol, for tests of the clients that use
it (LLM judge, feature explainer, rewriter). The reply is computed by a Python function of the messages: a
string, None (no content), or ``{"content": str, "tokens": [(token, {alternative: logprob})]}``, whose tokens
come back as ``choices[0].logprobs.content`` when the request asks for ``logprobs`` (as OpenAI and vLLM do)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = Callable[[list[dict[str, str]], str], "str | dict | None"]


class Status(Exception):
    """Raised by a reply function: the server answers with this HTTP status instead (429, 503...)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


@contextmanager
def openai_server(reply: Reply):
    """Yield the base URL (``http://127.0.0.1:PORT/v1``) of a server answering with ``reply(messages, model)``."""
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            try:
                content = reply(body["messages"], body["model"])  # None: no content (a reasoning server)
            except Status as e:
                self.send_error(e.code)
                return
            choice = {"index": 0, "finish_reason": "stop"}
            if isinstance(content, dict):
                if body.get("logprobs"):
                    k = int(body.get("top_logprobs") or 0)
                    choice["logprobs"] = {"content": [
                        {"token": t, "logprob": top.get(t, 0.0),
                         "top_logprobs": [{"token": a, "logprob": lp} for a, lp in
                                          sorted(top.items(), key=lambda x: -x[1])[:k]]}
                        for t, top in content["tokens"]]}
                content = content["content"]
            choice["message"] = {"role": "assistant", "content": content}
            data = json.dumps({"id": f"cmpl-{len(requests)}", "object": "chat.completion", "model": body["model"],
                               "choices": [choice]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1", requests
    finally:
        server.shutdown()
        server.server_close()
