"""HTTP and websocket hardening against a real hub: pages of other origins (real headless
Chromium), DNS rebinding, authorization schemes, wrong-token lockout, ids in paths, content
types, and playback files that are not recordings."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, async_playwright
from yarl import URL

from hub.auth import AdminToken, Guard

from .conftest import serve_app, wait_for
from .test_auth import request as fake_request
from .test_dashboard import ARGS

EEG = {"plugins": {"eeg": {"state_model": False}}, "zeroconf": {"enabled": False}}


async def launch(*extra: str) -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (./dev test installs it)"
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium, args=[*ARGS, *extra])
        yield b
        await b.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for b in launch():
        yield b


@pytest.fixture
async def rebinding_browser() -> AsyncIterator[Browser]:
    """evil.example resolves to 127.0.0.1, as after a DNS rebinding attack."""
    async for b in launch("--host-resolver-rules=MAP evil.example 127.0.0.1"):
        yield b


def counters(hub: Any) -> dict[str, int]:
    return {k: v for k, v in hub.state.counters.items() if k.startswith("http_refused")}


async def call(s: aiohttp.ClientSession, method: str, url: str | URL, **kw: Any) -> tuple[int, Any]:
    async with s.request(method, url, **kw) as r:
        return r.status, await r.json(content_type=None)


ATTACK_PAGE = """<!doctype html><title>not the hub</title><script>
window.results = {};
const hub = "%HUB%";
const body = JSON.stringify({task: "echo", text: "sent by another site"});
async function attempt(name, f) {
  try { const r = await f(); window.results[name] = "status " + r.status; }
  catch (e) { window.results[name] = "error " + e.name; }
}
// A "simple" CORS request: no preflight, the browser sends it and only hides the answer.
attempt("text_plain", () => fetch(hub + "/api/infer", {method: "POST", body, headers: {"Content-Type": "text/plain"}}));
attempt("no_cors_form", () => fetch(hub + "/api/infer", {method: "POST", mode: "no-cors",
                                                         body: new URLSearchParams({task: "echo", text: "x"})}));
attempt("json_preflight", () => fetch(hub + "/api/infer", {method: "POST", body,
                                                           headers: {"Content-Type": "application/json"}}));
attempt("read", () => fetch(hub + "/api/devices"));
const ws = new WebSocket(hub.replace("http://", "ws://") + "/api/ws");
ws.onopen = () => { window.results.ws = "open"; };
ws.onmessage = (m) => { window.results.ws_message = m.data.slice(0, 40); };
ws.onclose = (e) => { if (!window.results.ws) window.results.ws = "closed " + e.code; };
</script>"""


async def test_a_page_of_another_origin_can_do_nothing(mosquitto: Any, make_hub: Any, browser: Browser) -> None:
    """require_token = remote: loopback writes need no token, so only the Origin check stands
    between another site's page and the hub."""
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"require_token": "remote"}) as hub:
        page_app = web.Application()

        async def evil(request: web.Request) -> web.Response:
            return web.Response(text=ATTACK_PAGE.replace("%HUB%", hub.http_url), content_type="text/html")

        page_app.router.add_get("/", evil)
        async with serve_app(page_app) as evil_url:
            assert evil_url != hub.http_url
            page = await browser.new_page()
            await page.goto(evil_url + "/")
            await page.wait_for_function("() => ['text_plain', 'no_cors_form', 'json_preflight', 'read', 'ws']"
                                         ".every((k) => k in window.results)", timeout=10_000)
            results = await page.evaluate("window.results")
        assert results["text_plain"] == "error TypeError", results
        assert results["json_preflight"] == "error TypeError", results  # the preflight was refused
        assert results["read"] == "error TypeError", results
        assert results["no_cors_form"] == "status 0", results  # opaque: the hub's counters tell
        assert results["ws"].startswith("closed") and "ws_message" not in results, results
        assert hub.dispatcher.counts["requests"] == 0, "the hub ran nothing"
        assert not hub.live.clients
        # text/plain, the form, the preflight, the read and the handshake: each refused and counted.
        assert counters(hub)["http_refused.cross_origin"] >= 5, counters(hub)
        async with aiohttp.ClientSession() as s:
            status, health = await call(s, "GET", hub.http_url + "/api/health")
            assert health["counters"]["http_refused.cross_origin"] >= 5
            # The same request without a browser's Origin (curl, the CLI) still runs.
            status, _ = await call(s, "POST", hub.http_url + "/api/infer", json={"task": "echo", "text": "x"})
            assert status in (200, 503) and hub.dispatcher.counts["requests"] == 1
            # The hub's own origin, and one listed in allowed_origins, pass; "null" does not.
            status, _ = await call(s, "GET", hub.http_url + "/api/devices", headers={"Origin": hub.http_url})
            assert status == 200
            for origin in ("null", "http://127.0.0.1:1", "https://evil.example", hub.http_url + "/path"):
                status, err = await call(s, "GET", hub.http_url + "/api/devices", headers={"Origin": origin})
                assert status == 403 and err["error"]["code"] == "cross_origin", origin
            status, err = await call(s, "GET", hub.http_url + "/api/devices", headers={"Sec-Fetch-Site": "cross-site"})
            assert status == 403 and err["error"]["code"] == "cross_origin"
            # A link from another site to the dashboard page itself is fine.
            async with s.get(hub.http_url + "/", headers={"Sec-Fetch-Site": "cross-site",
                                                          "Sec-Fetch-Mode": "navigate"}) as r:
                assert r.status == 200
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(hub.http_url + "/api/ws", headers={"Origin": "http://127.0.0.1:1"})
            assert exc.value.status == 403
            async with s.ws_connect(hub.http_url + "/api/ws") as ws:  # no Origin: not a browser
                assert (await ws.receive_json(timeout=5))["type"] == "hello"


async def test_allowed_origins_and_hosts(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False},
                        http={"allowed_origins": ["https://dash.example"], "allowed_hosts": ["hub.example"]}) as hub:
        port = URL(hub.http_url).port
        async with aiohttp.ClientSession() as s:
            status, _ = await call(s, "GET", hub.http_url + "/api/devices", headers={"Origin": "https://dash.example"})
            assert status == 200
            status, _ = await call(s, "GET", hub.http_url + "/api/devices",
                                   headers={"Host": f"hub.example:{port}", "Origin": f"https://hub.example:{port}"})
            assert status == 200, "https through a proxy that keeps the Host"
            status, _ = await call(s, "GET", hub.http_url + "/api/devices", headers={"Host": "hub.example"})
            assert status == 200


async def test_dns_rebinding_is_refused(mosquitto: Any, make_hub: Any, rebinding_browser: Browser) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}) as hub:
        port = URL(hub.http_url).port
        # A page whose name now points at the hub is same-origin with it: only Host gives it away.
        page = await rebinding_browser.new_page()
        for path in ("/", "/api/devices", "/api/health"):
            resp = await page.goto(f"http://evil.example:{port}{path}")
            assert resp is not None and resp.status == 403, path
            err = json.loads(await resp.text())["error"]
            assert err["code"] == "bad_host" and "evil.example" in err["message"] and "http.allowed_hosts" in err["message"]
        async with aiohttp.ClientSession() as s:
            status, err = await call(s, "POST", hub.http_url + "/api/infer", json={"task": "echo", "text": "x"},
                                     headers={"Host": f"evil.example:{port}"})
            assert status == 403 and err["error"]["code"] == "bad_host"
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(hub.http_url + "/api/ws", headers={"Host": f"evil.example:{port}"})
            assert exc.value.status == 403
            for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", socket.gethostname(),
                         socket.gethostname().removesuffix(".local") + ".local"):
                status, _ = await call(s, "GET", hub.http_url + "/api/health", headers={"Host": host})
                assert status == 200, host
        assert hub.dispatcher.counts["requests"] == 0
        assert counters(hub)["http_refused.bad_host"] >= 5


async def test_only_bearer_authorization(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"require_token": "writes"}) as hub:
        token = hub.new_admin_token
        async with aiohttp.ClientSession() as s:
            for value in ("Basic YWRtaW46YWRtaW4=", f"Basic {token}", 'Digest username="admin"', "Bearer", "Bearer ",
                          token, "Token " + token):
                # Even a loopback read that needs no token: the header says the client is confused.
                status, err = await call(s, "GET", hub.http_url + "/api/health", headers={"Authorization": value})
                assert status == 401 and err["error"]["code"] == "unsupported_auth_scheme", value
                assert token not in err["error"]["message"]
            status, _ = await call(s, "GET", hub.http_url + "/api/health", headers={"Authorization": f"bearer {token}"})
            assert status == 200, "the scheme is case-insensitive"
        assert counters(hub)["http_refused.unsupported_auth_scheme"] == 7


async def test_wrong_tokens_never_lock_out_the_right_one(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"require_token": "writes"}) as hub:
        token = hub.new_admin_token
        ws_url = hub.http_url + "/api/ws"
        async with aiohttp.ClientSession() as s:
            statuses = []
            for _ in range(12):
                with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                    await s.ws_connect(ws_url + "?token=bad")
                statuses.append(exc.value.status)
            assert statuses == [401] * 10 + [429] * 2
            # The right token, at once, on the websocket and on a write.
            async with s.ws_connect(f"{ws_url}?token={token}") as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "hello"
            status, _ = await call(s, "POST", hub.http_url + "/api/route", json={"task": "echo", "text": "x"},
                                   headers={"Authorization": f"Bearer {token}"})
            assert status == 200
            status, _ = await call(s, "GET", hub.http_url + "/api/health")
            assert status == 200, "a local read without a token is not affected either"
            status, err = await call(s, "POST", hub.http_url + "/api/route", json={"task": "echo", "text": "x"})
            assert status == 401 and err["error"]["code"] == "unauthorized", "no token: 401, not 429"
        # Another address (127.0.0.2 is loopback too, and a real second client): its own count.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))) as other:
            status, err = await call(other, "GET", hub.http_url + "/api/health", headers={"Authorization": "Bearer bad"})
            assert status == 401 and err["error"]["code"] == "unauthorized"
        assert counters(hub)["http_refused.too_many_failures"] == 2
        assert counters(hub)["http_refused.unauthorized"] == 12


def test_guard_counts_each_address_alone(tmp_path: Path) -> None:
    admin = AdminToken(tmp_path / "t.json")
    token = admin.ensure()
    guard = Guard(admin, None, "writes", max_failures=3)
    bad = {"Authorization": "Bearer wrong"}
    results = [guard.check(fake_request("GET", "/api/devices", "192.168.1.50", bad)).status for _ in range(5)]
    assert results == [401, 401, 401, 429, 429]
    assert guard.check(fake_request("GET", "/api/devices", "192.168.1.50", {"Authorization": f"Bearer {token}"})) is None
    assert guard.check(fake_request("GET", "/api/devices", "192.168.1.51", bad)).status == 401


async def test_ids_in_paths(mosquitto: Any, make_hub: Any, tmp_path: Path) -> None:
    """Session ids become directories: ``..%2F`` once wrote report.png anywhere. Every id in a
    path is checked before anything is looked up."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "summary.json").write_text("{}")  # what the report route used to look for
    async with make_hub(mosquitto.url, **EEG) as hub:
        sessions = hub.data_dir / "plugins" / "eeg" / "sessions"
        sessions.mkdir(parents=True, exist_ok=True)
        assert (sessions / "../../../../victim").resolve() == victim.resolve()
        base = hub.http_url
        bad = ["..%2F..%2F..%2F..%2Fvictim", "%2E%2E%2F%2E%2E%2F%2E%2E%2F%2E%2E%2Fvictim", "..%5C..%5Cvictim", "..",
               "%2E%2E", "a%00b", "x" * 65, "a.b", "a%20b"]
        async with aiohttp.ClientSession() as s:
            for sid in bad:
                for method, path in (("POST", f"/api/eeg/sessions/{sid}/report"), ("GET", f"/api/eeg/sessions/{sid}"),
                                     ("DELETE", f"/api/eeg/sessions/{sid}"), ("POST", f"/api/eeg/sessions/{sid}/pause")):
                    status, err = await call(s, method, URL(base + path, encoded=True))
                    assert status == 400 and err["error"]["code"] == "bad_id", (path, err)
            for method, path in (("GET", "/api/devices/..%2F..%2Fx"), ("DELETE", "/api/devices/a%5Cb"),
                                 ("GET", "/api/devices/-starts-with-dash"), ("GET", "/api/deferred/..%2Fx"),
                                 ("GET", "/api/deferred/" + "y" * 129), ("POST", "/api/rules/..%2F..%2Fx/approve"),
                                 ("POST", "/api/rules/NOT-A-RULE/disable")):
                status, err = await call(s, method, URL(base + path, encoded=True))
                assert status == 400 and err["error"]["code"] == "bad_id", (path, err)
            # Well-formed ids still reach their handlers.
            status, err = await call(s, "GET", base + "/api/devices/no-such-device")
            assert status == 404 and err["error"]["code"] == "unknown_device"
            status, err = await call(s, "POST", base + "/api/rules/0123456789ab/approve")
            assert status == 404 and err["error"]["code"] == "unknown_rule"
            status, err = await call(s, "GET", base + "/api/eeg/sessions/nope")
            assert status == 404 and err["error"]["code"] == "unknown_session"
        # The same check on the MQTT command path.
        proc = await asyncio.create_subprocess_exec(
            "mosquitto_rr", "-h", "127.0.0.1", "-p", str(mosquitto.port), "-V", "5", "-t", "sovereign/cmd/eeg",
            "-e", "sovereign/reply/sec-test/eeg", "-m", json.dumps({"action": "stop", "session": "../../../../victim"}),
            "-W", "10", stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        answer = json.loads(out)
        assert not answer["ok"] and answer["error"]["code"] == "bad_id", answer
        assert counters(hub)["http_refused.bad_id"] >= 30
    assert sorted(p.name for p in victim.iterdir()) == ["summary.json"], "nothing was written outside the data dir"


async def test_writes_must_be_json(mosquitto: Any, make_hub: Any) -> None:
    async with make_hub(mosquitto.url, zeroconf={"enabled": False}, http={"require_token": "remote"}) as hub:
        url = hub.http_url + "/api/infer"
        body = json.dumps({"task": "echo", "text": "x"})
        async with aiohttp.ClientSession() as s:
            form = aiohttp.FormData({"task": "echo", "text": "x"})
            multipart = aiohttp.FormData({"task": "echo"})
            multipart.add_field("file", b"x", filename="x.bin")
            for kw in ({"data": body}, {"data": body.encode()}, {"data": form},
                       {"data": body, "headers": {"Content-Type": "text/plain"}},
                       {"data": body, "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
                       {"data": body, "headers": {"Content-Type": "application/jsonp"}}):
                status, err = await call(s, "POST", url, **kw)
                assert status == 415 and err["error"]["code"] == "unsupported_media_type", kw
            # A file upload (multipart) only where files are taken, and never from another
            # site's page: a sibling site's (Sec-Fetch-Site: same-site) and a foreign Origin.
            status, err = await call(s, "POST", hub.http_url + "/api/rules/0123456789ab/approve", data=multipart)
            assert status == 415 and err["error"]["code"] == "unsupported_media_type"
            for headers, code in (({"Sec-Fetch-Site": "same-site"}, 415), ({"Origin": "http://evil.example"}, 403),
                                  ({"Sec-Fetch-Site": "cross-site"}, 403)):
                upload = aiohttp.FormData()
                upload.add_field("file", b"x", filename="x.wav")
                status, err = await call(s, "POST", url, data=upload, headers=headers)
                assert status == code, (headers, err)
            assert hub.dispatcher.counts["requests"] == 0
            upload = aiohttp.FormData()
            upload.add_field("file", b"x", filename="x.wav")
            status, err = await call(s, "POST", url, data=upload)  # curl -F: reaches the handler
            assert status == 400 and err["error"]["code"] == "bad_audio", err
            status, err = await call(s, "POST", url, data="", headers={"Content-Type": "text/plain"})
            assert status == 400 and err["error"]["code"] == "bad_request", "an empty body may say anything"
            for ctype in ("application/json", "application/json; charset=utf-8", "Application/JSON"):
                status, _ = await call(s, "POST", url, data=body, headers={"Content-Type": ctype})
                assert status in (200, 503), ctype
            assert hub.dispatcher.counts["requests"] == 3
            # A write without a body needs no content type, but still no foreign Origin.
            status, err = await call(s, "POST", hub.http_url + "/api/rules/0123456789ab/approve")
            assert status == 404 and err["error"]["code"] == "unknown_rule"
            status, err = await call(s, "POST", hub.http_url + "/api/rules/0123456789ab/approve",
                                     headers={"Origin": "http://evil.example"})
            assert status == 403 and err["error"]["code"] == "cross_origin"
        assert counters(hub)["http_refused.unsupported_media_type"] == 8


async def test_a_playback_file_that_is_not_a_recording_is_refused(mosquitto: Any, make_hub: Any,
                                                                  tmp_path: Path) -> None:
    files = {"notes.txt": (b"hello, this is not EEG\n", "not tab-separated numbers"),
             "empty.csv": (b"", "empty"),
             "picture.png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not tab-separated numbers"),
             "four-columns.csv": (b"1.0\t2.0\t3.0\t4.0\n" * 10, "has 4 columns, the board has 32")}
    async with make_hub(mosquitto.url, **EEG) as hub:
        async with aiohttp.ClientSession() as s:
            for name, (content, why) in files.items():
                (tmp_path / name).write_bytes(content)
                status, err = await call(s, "POST", hub.http_url + "/api/eeg/sessions",
                                         json={"board": "playback", "file": str(tmp_path / name)})
                assert status == 400 and err["error"]["code"] == "bad_board", (name, err)
                assert str(tmp_path / name) in err["error"]["message"] and why in err["error"]["message"], err
            status, listing = await call(s, "GET", hub.http_url + "/api/eeg/sessions")
            assert listing["sessions"] == [], "no session runs with 0 samples"
