"""`actlab serve`: the playground's API against the library (same generations as steering by hand, validation,
queueing, cancellation) and the page driven end to end in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from conftest import shared_path

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

PAIRS = ("I love this happy sunny day || I hate this sad gloomy day\n"
         "What a wonderful kind friend || What a terrible cruel enemy\n"
         "She smiled with joy || She cried with grief")


@pytest.fixture(scope="module")
def server():

    import actlab
    from actlab.sae import SAEConfig, SparseAutoencoder
    from actlab.serve import Playground

    shared_path("models", "stories260k")
    model = actlab.load_model("stories260k")
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(model.d_model, 128, hook_point="blocks.2.resid_post"))
    texts = ["Once upon a time there was a little girl named Lily.", "The dog ran to the park and played all day.",
             "Tom was sad because his toy was broken.", "The sun was bright and the birds sang happily."] * 3
    pg = Playground(model, sae=sae, texts=texts)
    pg.extract({"pairs": PAIRS, "name": "happy"})
    with _serving(pg) as base:
        yield base, pg


@contextlib.contextmanager
def _serving(pg):
    """The playground's app on a free local port, in a thread, for the duration of the block."""
    import uvicorn

    from actlab.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(pg), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(timeout=10)


def _post(url: str, body) -> tuple[int, str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: ")]


def _texts(events: list[dict]) -> dict[str, str]:
    out = {"default": "", "steered": ""}
    for e in events:
        if "side" in e:
            out[e["side"]] += e["text"]
    return out


def test_generation_matches_steering_by_hand(server):
    from actlab import Steer

    base, pg = server
    code, body = _post(base + "/api/generate", {"prompt": "Once upon a time", "max_new_tokens": 16,
                                                "steer": [{"vector": "happy", "layers": [2], "multiplier": 6}]})
    assert code == 200
    ev = _events(body)
    got = _texts(ev)
    model = pg.model
    batch = model.tokenize("Once upon a time")
    n = batch["input_ids"].shape[1]
    plain = model.hf.generate(**batch, max_new_tokens=16, do_sample=False)
    with model.edit(Steer(pg.vectors["happy"], 6.0, layers=[2])):
        steered = model.hf.generate(**batch, max_new_tokens=16, do_sample=False)
    assert got["default"] == model.tokenizer.decode(plain[0, n:], skip_special_tokens=True)
    assert got["steered"] == model.tokenizer.decode(steered[0, n:], skip_special_tokens=True)
    assert got["default"] != got["steered"]
    export = ev[-1]["export"]
    assert ev[-1]["done"] and [r["side"] for r in export["rows"]] == ["default", "steered"]
    assert export["rows"][1]["interventions"][0]["kind"] == "steer"
    assert export["rows"][1]["interventions"][0]["layers"] == [2]
    for spec, layers in (("1-3:2", [1, 3]), ("all", pg.vectors["happy"].layers), ("-1", [model.n_layers - 1])):
        code, body = _post(base + "/api/generate", {"prompt": "Once", "max_new_tokens": 2,
                                                    "steer": [{"vector": "happy", "layers": spec, "multiplier": 1}]})
        assert code == 200 and _events(body)[-1]["export"]["rows"][1]["interventions"][0]["layers"] == layers
    assert len(got["default"].split()) > 3  # pieces arrive one token at a time and add up to the text
    assert sum(1 for e in ev if e.get("side") == "default") >= 8


def _firing_and_silent(pg, prompt: str) -> tuple[int, int]:
    """A feature of the playground's dictionary that fires on the prompt's tokens and one that never does."""
    point = pg.sae.cfg.hook_point
    with torch.no_grad(), pg.model.capture(point, positions="tokens") as acts:
        pg.model(**pg.model.tokenize(prompt))
    codes = pg.sae.encode(acts[point])
    fires = (codes > 0).sum(0)
    return int(codes.max(0).values.argmax()), int((fires == 0).nonzero()[0, 0])


def test_ablating_features_reports_how_much_they_can_matter(server):
    """Issue 27: ablating SAE features in the page gave no hint of the effect size. The first event says on how
    many prompt tokens each feature fires and the next-token KL of the edit alone, computed independently here."""
    from actlab import FeatureEdit

    base, pg = server
    prompt = "Once upon a time"
    on, off = _firing_and_silent(pg, prompt)
    code, body = _post(base + "/api/generate", {"prompt": prompt, "max_new_tokens": 2, "ablate": [on, off]})
    assert code == 200
    effect = _events(body)[0]["effect"]
    batch = pg.model.tokenize(prompt)
    with torch.no_grad():
        p = pg.model(**batch).logits[0, -1].log_softmax(-1)
        with pg.model.edit(FeatureEdit(pg.sae, ablate=[on, off])):
            q = pg.model(**batch).logits[0, -1].log_softmax(-1)
    kl = float((p.exp() * (p - q)).sum())
    assert effect["kl_next_token"] == pytest.approx(kl, rel=1e-4, abs=1e-7) and kl > 0
    by = {f["feature"]: f for f in effect["features"]}
    assert by[on]["fires_on"] >= 1 and by[on]["max"] > 0 and by[off]["fires_on"] == 0
    assert effect["tokens"] == batch["input_ids"].shape[1]
    code, body = _post(base + "/api/generate", {"prompt": prompt, "max_new_tokens": 2, "ablate": [off]})
    assert _events(body)[0]["effect"]["kl_next_token"] == 0.0  # a silent feature changes nothing here
    code, body = _post(base + "/api/generate", {"prompt": prompt, "max_new_tokens": 2})
    assert not any("effect" in e for e in _events(body))  # no edit, no effect line


@pytest.mark.parametrize("body,message", [
    ({"prompt": ""}, "the prompt is empty"),
    ({"prompt": "hi", "steer": [{"vector": "sad", "multiplier": 1}]}, "unknown vector 'sad'; loaded: happy"),
    ({"prompt": "hi", "steer": [{"vector": "happy", "multiplier": float("nan")}]}, "multiplier must be a finite"),
    ({"prompt": "hi", "steer": [{"vector": "happy", "layers": [9], "multiplier": 1}]}, "has no layer 9"),
    ({"prompt": "hi", "steer": [{"vector": "happy", "layers": "2-x", "multiplier": 1}]}, "2-x"),
    ({"prompt": "hi", "steer": [{"vector": "happy", "layers": "7", "multiplier": 1}]}, "7"),
    ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens must be between 1 and 256"),
    ({"prompt": "hi", "positions": "everywhere"}, "unknown positions 'everywhere'"),
    ({"prompt": "hi", "chat": True}, "has no chat template"),
    ({"prompt": "hi", "ablate": [500]}, "feature 500 does not exist"),
    (b"{not json", "not valid JSON"),
])
def test_bad_requests_answer_one_line_and_the_server_keeps_running(server, body, message):
    base, _ = server
    code, text = _post(base + "/api/generate", body)
    assert code == 400 and message in json.loads(text)["error"], text
    code, _ = _post(base + "/api/lens", {"prompt": "Once", "kind": "resid_post"})
    assert code == 200


def test_only_local_json_requests_are_served(server):
    """A DNS-rebinding page (foreign Host header) and a simple cross-origin post (not JSON) are refused."""
    base, _ = server
    req = urllib.request.Request(base + "/api/info", headers={"Host": "evil.example:8765"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403 and "evil.example" in json.loads(e.value.read())["error"]
    req = urllib.request.Request(base + "/api/generate", data=b'{"prompt": "hi"}',
                                 headers={"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 415
    for host in ("localhost", "127.0.0.1"):
        req = urllib.request.Request(base + "/api/info", headers={"Host": f"{host}:1"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_hostile_requests_are_refused_and_never_a_server_error(server):
    """Framing, oversized and deeply nested bodies, lone surrogates, non-ASCII digits, unknown keys, a Host header
    with a bogus port: each a 4xx with one message, and the server keeps serving."""
    base, _ = server
    code, headers, page = _get(base + "/")
    csp = headers["content-security-policy"]
    assert code == 200 and "frame-ancestors 'none'" in csp and headers["x-frame-options"] == "DENY"
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert "unsafe-inline" not in script_src
    import re

    inline = [m for m in re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S) if m[1].strip()
              and "application/json" not in m[0]]
    assert inline == []  # the only script is /playground.js; the page's data is a JSON block
    code, headers, js = _get(base + "/playground.js")
    assert code == 200 and "javascript" in headers["content-type"] and "fetch(" in js
    assert _get(base + "/api/info")[1]["x-frame-options"] == "DENY"
    cases = [
        (b'{"prompt": "' + b"x" * (2 << 20) + b'"}', 413, "at most"),
        (b"[" * 1000 + b"]" * 1000, 400, "nested deeper"),
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested deeper"),
        (b'{"prompt": "a\\ud800b"}', 400, "surrogate"),
        (b"\xff\xfe{}", 400, "UTF-8"),
        (json.dumps({"prompt": "hi", "max_tokens": 4}).encode(), 400, "'max_tokens'"),
        (json.dumps({"prompt": "hi", "steer": [{"vector": "happy", "mult": 2}]}).encode(), 400, "'mult'"),
    ]
    for body, want, message in cases:
        code, text = _post(base + "/api/generate", body)
        assert code == want and message in json.loads(text)["error"], (body[:40], code, text[:200])
    code, text = _post(base + "/api/lens", {"prompt": "Once", "kind": "resid_post", "topk": 3})
    assert code == 400 and "'topk'" in json.loads(text)["error"]
    code, _, text = _get(base + "/api/feature/%C2%B2")  # '²': str.isdigit() says yes, int() says no
    assert code == 400 and "number" in json.loads(text)["error"]
    for host in ("localhost:evil.example", "127.0.0.1:80:80", "[::1", "localhost.evil.example"):
        assert _get(base + "/api/info", {"Host": host})[0] == 403, host
    assert _get(base + "/api/info", {"Host": "[::1]:8765"})[0] == 200
    code, _ = _post(base + "/api/lens", {"prompt": "Once", "kind": "resid_post"})
    assert code == 200


def test_serve_refuses_a_broken_vector_before_loading(tmp_path, capsys):
    from actlab.steering import SteeringVector
    from test_cli import run

    for name, value in (("nan", float("nan")), ("inf", float("inf")), ("zero", 0.0)):
        path = tmp_path / f"{name}.safetensors"
        SteeringVector({1: torch.full((64,), value)}, "resid_post").save(path)
        code, _, err = run(["serve", "./no-such-model", "--vector", str(path)], capsys)
        assert code == 2 and err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert ("zero" if name == "zero" else "NaN or infinite") in err and "no-such-model" not in err


def test_concurrent_requests_queue_and_cancel_stops(server):
    base, _ = server
    body = {"prompt": "Once upon a time", "max_new_tokens": 12,
            "steer": [{"vector": "happy", "layers": [1, 3], "multiplier": 4}]}
    alone = _texts(_events(_post(base + "/api/generate", body)[1]))
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(_texts(_events(_post(base + "/api/generate",
                                                                                   body)[1]))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [alone] * 3  # interleaved hooks would have mixed steered and default runs
    # cancel: a long generation stops soon after the request
    out: dict = {}

    def long() -> None:
        out["events"] = _events(_post(base + "/api/generate", {"prompt": "Once", "max_new_tokens": 256})[1])

    t = threading.Thread(target=long)
    t.start()
    time.sleep(0.5)
    assert _post(base + "/api/cancel", {})[0] == 200
    t.join(timeout=60)
    ev = out["events"]
    assert any(e.get("cancelled") for e in ev) and ev[-1]["done"]
    pieces = [e for e in ev if e.get("side") == "default"]
    assert 0 < len(pieces) < 256  # stopped before max_new_tokens (one piece per generated token at most)


def test_a_closed_connection_stops_its_generation(server):
    import http.client

    base, pg = server
    calls = []
    handle = pg.model.hf.register_forward_hook(lambda *a: calls.append(1))
    try:
        host, port = base.removeprefix("http://").split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        c.request("POST", "/api/generate", body=json.dumps({"prompt": "Once", "max_new_tokens": 256}),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        assert r.status == 200 and r.read(40)  # a few pieces arrived, then the tab closes
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        deadline = time.time() + 60
        while (pg.lock.locked() or pg._current is not None) and time.time() < deadline:
            time.sleep(0.02)
        assert not pg.lock.locked()
        assert len(calls) < 256  # stopped early: neither the default nor the steered side ran to the end
    finally:
        handle.remove()
    code, _ = _post(base + "/api/lens", {"prompt": "Once", "kind": "resid_post"})
    assert code == 200


def test_lens_and_features_endpoints(server):
    from actlab.lens import lens_grid

    base, pg = server
    code, text = _post(base + "/api/lens", {"prompt": "Once upon a time", "kind": "mlp_out", "top_k": 3})
    assert code == 200
    res = json.loads(text)
    assert res == json.loads(json.dumps(lens_grid(pg.model, "Once upon a time", "mlp_out", top_k=3)))
    assert len(res["layers"]) == pg.model.n_layers and all(len(L["top"]) == len(res["tokens"]) for L in res["layers"])
    code, text = _post(base + "/api/features", {"prompt": "Once upon a time"})
    assert code == 200 and len(json.loads(text)["features"]) == len(json.loads(text)["tokens"])
    with urllib.request.urlopen(base + "/api/feature/5", timeout=60) as r:
        card = json.loads(r.read())
    assert card["dashboard"]["features"][0]["feature"] == 5 and 'id="f5"' in card["html"]


def test_playground_in_chromium(server, tmp_path):
    from playwright.sync_api import expect

    from test_analysis import _chromium, chromium_page

    _chromium()  # skip before any work where Chromium is absent
    base, _ = server
    with chromium_page(1280, 900) as (page, console, requests):
        page.goto(base + "/")
        page.fill("#prompt", "Once upon a time")
        page.fill("#layers-0", "2")
        page.fill("#max-new", "12")

        def generate() -> tuple[str, str]:
            page.click("#generate")
            expect(page.locator("#status")).to_have_text("done", timeout=60000)
            return page.inner_text("#out-default"), page.inner_text("#out-steered")

        page.fill("#mult-0", "0")
        d0, s0 = generate()
        assert d0 and d0 == s0  # multiplier 0: nothing steered
        page.fill("#mult-0", "8")
        assert page.inner_text("#mult-val-0") == "8"
        d1, s1 = generate()
        assert d1 == d0 and s1 != d0  # the default is unchanged, the steered text moves
        for spec in ("all", "1-3:2"):  # the layer grammar the CLI and README use, parsed by the same parser
            page.fill("#layers-0", spec)
            d, s = generate()
            assert d == d0 and s != d0 and page.inner_text("#error") == "", spec
        on, _ = _firing_and_silent(server[1], "Once upon a time")
        page.fill("#ablate", str(on))
        generate()
        assert f"feature {on} fires on" in page.inner_text("#effect") and "nats" in page.inner_text("#effect")
        page.fill("#ablate", "")
        page.fill("#layers-0", "1-x")
        page.click("#generate")
        expect(page.locator("#error")).to_contain_text("1-x")
        page.fill("#layers-0", "2")
        page.screenshot(path=str(tmp_path / "steer.png"))
        page.fill("#prompt", "")
        page.click("#generate")
        expect(page.locator("#error")).to_contain_text("the prompt is empty")
        # extract a vector on the spot and steer with two vectors at once
        page.click("summary")
        page.fill("#pairs", "He was glad || He was angry\nA bright morning || A dark night")
        page.fill("#vec-name", "bright")
        page.click("#extract")
        expect(page.locator(".vrow")).to_have_count(2)  # (wait_for_function would need eval, which the CSP forbids)
        page.fill("#prompt", "Once upon a time")
        page.fill("#layers-1", "3")
        page.fill("#mult-1", "6")
        _, s2 = generate()
        assert s2 != s1
        # the lens: run it, hover a cell, read the tooltip
        page.click("nav button[data-view='v-lens']")
        page.select_option("#lens-kind", "resid_post")
        page.click("#run-lens")
        page.wait_for_selector("table.lens td.lens-cell")
        page.hover("table.lens tr:nth-child(2) td.lens-cell >> nth=1")
        assert page.is_visible("#lens-tip") and "layer" in page.inner_text("#lens-tip")
        plain_grid = page.inner_text("#lens-out")
        page.check("#lens-steered")  # the steer view's two vectors (x8, x6) while the lens reads
        page.click("#run-lens")
        expect(page.locator("#lens-out")).not_to_have_text(plain_grid)
        page.screenshot(path=str(tmp_path / "lens.png"))
        # features: per token, then one feature's page
        page.click("nav button[data-view='v-features']")
        page.click("#run-features")
        page.wait_for_selector("#features-out .chip")
        page.click("#features-out .chip >> nth=0")
        page.wait_for_selector("#feature-card .card.shown")
        assert "top contexts" in page.inner_text("#feature-card")
        page.screenshot(path=str(tmp_path / "features.png"))
    errors = [c for c in console if c[0] in ("error", "pageerror")]
    # the two bad requests we sent on purpose (layers "1-x", empty prompt) are logged by Chromium as failed resources
    assert [e for e in errors if "status of 400" not in e[1]] == [] and len(errors) == 2, errors
    assert requests and all(u.startswith(base) or u.startswith(("data:", "blob:")) for u in requests), requests


def test_the_lens_view_reads_the_steered_run(server):
    """Issue 25: the playground's lens honours the loaded vectors when asked ("steered run"): equal to the lens
    grid taken by hand under the same Steer; a zero multiplier is the plain lens."""
    from actlab import Steer
    from actlab.lens import lens_grid

    base, pg = server
    body = {"prompt": "Once upon a time", "kind": "resid_post", "top_k": 3,
            "steer": [{"vector": "happy", "layers": "2", "multiplier": 8}]}
    code, text = _post(base + "/api/lens", body)
    assert code == 200, text
    res = json.loads(text)
    with pg.model.edit(Steer(pg.vectors["happy"], 8.0, layers=[2])):
        want = lens_grid(pg.model, "Once upon a time", "resid_post", top_k=3)
    plain = lens_grid(pg.model, "Once upon a time", "resid_post", top_k=3)
    assert {k: v for k, v in res.items() if k != "interventions"} == json.loads(json.dumps(want))
    assert want != plain and res["interventions"][0]["kind"] == "steer"
    body["steer"][0]["multiplier"] = 0
    code, text = _post(base + "/api/lens", body)
    assert json.loads(text) == json.loads(json.dumps(plain))
    code, text = _post(base + "/api/lens", {**body, "positions": "generated"})
    assert code == 400 and "generated" in text


def test_lens_export_is_what_the_cli_writes(server, tmp_path, capsys):
    from test_cli import run

    base, _ = server
    grid = tmp_path / "grid.json"
    code, _, err = run(["lens", "stories260k", "-p", "Once upon a time", "--points", "mlp_out", "--top-k", "3",
                        "--grid", str(grid)], capsys)
    assert code == 0, err
    code, text = _post(base + "/api/lens", {"prompt": "Once upon a time", "kind": "mlp_out", "top_k": 3})
    assert code == 200 and json.loads(text) == json.loads(grid.read_text())


def test_playground_without_a_vector_opens_on_an_empty_state(server, tmp_path):
    """No --vector: the page says how to get one (no error), generation shows the default text on both sides,
    and a failed request leaves the status at 'failed', not 'generating...'."""
    from playwright.sync_api import expect

    from actlab.serve import Playground
    from test_analysis import _chromium, chromium_page

    _chromium()
    _, pg = server
    with _serving(Playground(pg.model)) as base, chromium_page(1280, 900) as (page, console, _):
        page.goto(base + "/")
        expect(page.locator("#no-vectors")).to_contain_text("No steering vector loaded yet")
        assert page.inner_text("#error") == "" and page.locator("details").get_attribute("open") is not None
        page.fill("#prompt", "Once upon a time")
        page.fill("#max-new", "6")
        page.click("#generate")
        expect(page.locator("#status")).to_have_text("done", timeout=60000)
        assert page.inner_text("#out-default") and page.inner_text("#out-default") == page.inner_text("#out-steered")
        page.fill("#prompt", "")
        page.click("#generate")
        expect(page.locator("#status")).to_have_text("failed")
        expect(page.locator("#error")).to_contain_text("the prompt is empty")
        page.screenshot(path=str(tmp_path / "empty.png"))
    assert not [c for c in console if c[0] == "pageerror"], console
