"""The HTTP service, started for real with uvicorn on 127.0.0.1 and exercised over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

fastapi = pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from wildvision import Classifier  # noqa: E402
from wildvision.errors import ConfigError  # noqa: E402
from wildvision.imaging import DEFAULT_MAX_PIXELS  # noqa: E402
from wildvision.serve import ServeConfig, create_app, load_api_keys  # noqa: E402
from wildvision.serve import _config as serve_config  # noqa: E402

TINY = Path(__file__).parent / "data" / "tiny-model"
REPO = Path(__file__).resolve().parents[1]
API_KEY = "test-key-0123456789abcdef"


# -- helpers -----------------------------------------------------------------------------------
def jpeg(seed: int, size: tuple[int, int] = (120, 90)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A 4000x4000 PNG: 56 kB on the wire, ~0.1-0.2 s of real decoding each (a slow input)."""
    buf = io.BytesIO()
    Image.new("RGB", (4000, 4000), (120, 30, 200)).save(buf, "PNG")
    return buf.getvalue()


@contextlib.contextmanager
def running_server(config: ServeConfig, **uvicorn_options: Any) -> Iterator[tuple[str, Any]]:
    """Serve ``create_app(config)`` with uvicorn on a free loopback port, in a thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    port = sock.getsockname()[1]
    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False,
                                           **uvicorn_options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("server did not become ready")
            time.sleep(0.05)
        yield url, app
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Any]]:
    with running_server(ServeConfig(model=str(TINY), max_body_bytes=200_000,
                                    max_pixels=1_000_000, max_batch_files=8)) as s:
        yield s


def wait_until(pred: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.fixture
def late_access_log() -> Iterator[None]:
    """The access-log line is written after the response has gone out, so a client can read
    its response before the line exists: make it always late (0.3 s), so that a test reading
    the log at once fails every time instead of now and then."""

    def delay(record: logging.LogRecord) -> bool:
        time.sleep(0.3)
        return True

    logger = logging.getLogger("wildvision.serve.access")
    logger.addFilter(delay)
    yield
    logger.removeFilter(delay)


def access_lines(caplog: pytest.LogCaptureFixture, request_ids: Sequence[str]
                 ) -> dict[str, list[logging.LogRecord]]:
    """The access-log records of these request ids, once each has at least one (the lines
    are written after the responses, in the server's thread)."""

    def lines() -> dict[str, list[logging.LogRecord]]:
        out: dict[str, list[logging.LogRecord]] = {}
        for rec in list(caplog.records):
            rid = getattr(rec, "fields", {}).get("request_id")
            if rec.name == "wildvision.serve.access" and rid in request_ids:
                out.setdefault(rid, []).append(rec)
        return out

    wait_until(lambda: len(lines()) == len(set(request_ids)))
    return lines()


# -- basic endpoints ---------------------------------------------------------------------------
def test_health_ready_models_openapi(server: tuple[str, Any]) -> None:
    url, _ = server
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["model"] == "tiny-test"
    models = httpx.get(url + "/v1/models").json()["models"]
    assert len(models) == 1
    m = models[0]
    assert (m["name"], m["version"]) == ("tiny-test", "0.0.1")
    assert set(m["groups"]) >= {"ivory", "benign"}
    assert m["thresholds"]["ivory"] == {"flag": 0.5, "review": 0.2}
    schema = httpx.get(url + "/openapi.json").json()
    assert {"/v1/classify", "/v1/classify/batch", "/v1/models", "/healthz", "/readyz"} <= set(
        schema["paths"])
    body = schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/octet-stream" in body


def test_classify_raw_and_multipart_match_the_library(server: tuple[str, Any]) -> None:
    url, _ = server
    img = jpeg(1)
    expected = Classifier(str(TINY)).classify(img).to_dict()
    raw = httpx.post(url + "/v1/classify", content=img,
                     headers={"Content-Type": "image/jpeg"})
    # curl --data-binary sends this content type; it must still be read as raw bytes
    form_typed = httpx.post(url + "/v1/classify", content=img,
                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    multi = httpx.post(url + "/v1/classify",
                       files={"file": ("../../etc/listing 1.jpg", img, "image/jpeg")})
    for r in (raw, form_typed, multi):
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["ok"] is True
        for key in ("decision", "top_group", "flagged_groups", "model", "model_version",
                    "image_sha256", "width", "height"):
            assert got[key] == expected[key], key
        for g, v in expected["groups"].items():
            assert got["groups"][g]["probability"] == pytest.approx(v["probability"], abs=1e-5)
            assert got["groups"][g]["decision"] == v["decision"]
        assert [t["label"] for t in got["top_labels"]] == [
            t["label"] for t in expected["top_labels"]]
    assert raw.json()["source"] == "<upload>"
    assert multi.json()["source"] == "listing 1.jpg"  # path parts of the client's name dropped


def test_batch_results_in_order_with_failures(server: tuple[str, Any]) -> None:
    url, _ = server
    good = [jpeg(s) for s in range(3)]
    files = [
        ("files", ("a.jpg", good[0], "image/jpeg")),
        ("files", ("broken.jpg", good[1][: len(good[1]) // 3], "image/jpeg")),
        ("files", ("b.jpg", good[1], "image/jpeg")),
        ("files", ("notes.txt", b"<html>not an image</html>", "text/plain")),
        ("files", ("c.jpg", good[2], "image/jpeg")),
    ]
    r = httpx.post(url + "/v1/classify/batch", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["model_version"]) == ("tiny-test", "0.0.1")
    assert body["count"] == 5 and body["failed"] == 2
    res = body["results"]
    assert [d["source"] for d in res] == ["a.jpg", "broken.jpg", "b.jpg", "notes.txt", "c.jpg"]
    assert [d["ok"] for d in res] == [True, False, True, False, True]
    assert res[1]["error_type"] == "InvalidImageError"
    assert "truncated" in res[1]["message"] or "corrupt" in res[1]["message"]
    assert res[3]["error_type"] == "InvalidImageError"
    assert res[3]["model"] == "tiny-test"
    clf = Classifier(str(TINY))
    for d, img in zip((res[0], res[2], res[4]), good, strict=True):
        assert d["image_sha256"] == clf.classify(img).image_sha256
        assert d["decision"] == clf.classify(img).decision


def test_batch_rejects_non_multipart_and_too_many_files(server: tuple[str, Any]) -> None:
    url, _ = server
    r = httpx.post(url + "/v1/classify/batch", content=jpeg(0),
                   headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 415
    assert r.json()["error_type"] == "UnsupportedMediaType"
    files = [("files", (f"{i}.jpg", b"x", "image/jpeg")) for i in range(9)]  # limit is 8
    r = httpx.post(url + "/v1/classify/batch", files=files)
    assert r.status_code == 400
    assert r.json()["error_type"] == "InvalidMultipart"
    r = httpx.post(url + "/v1/classify", files=[("file", ("a.jpg", jpeg(0))),
                                                ("file", ("b.jpg", jpeg(1)))])
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("payload", "error_type"),
    [
        (b"", "InvalidImageError"),
        (b"GIF89a\x01\x00garbage", "InvalidImageError"),
        (b"http://169.254.169.254/latest/meta-data/", "InvalidImageError"),  # never fetched
        ("truncated", "InvalidImageError"),
        ("too_many_pixels", "ImageTooLargeError"),
        ("ico", "UnsupportedFormatError"),
    ],
)
def test_bad_images_get_422_with_typed_error(server: tuple[str, Any], payload: Any,
                                             error_type: str) -> None:
    url, _ = server
    if payload == "truncated":
        payload = jpeg(5, (300, 300))[:700]
    elif payload == "too_many_pixels":  # 1200x1200 > the server's max_pixels of 1,000,000
        buf = io.BytesIO()
        Image.new("L", (1200, 1200)).save(buf, "PNG")
        payload = buf.getvalue()
    elif payload == "ico":
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (1, 2, 3)).save(buf, "ICO")
        payload = buf.getvalue()
    r = httpx.post(url + "/v1/classify", content=payload)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["ok"] is False
    assert body["error_type"] == error_type
    assert body["message"]
    assert "Traceback" not in r.text
    assert body["request_id"] == r.headers["x-request-id"]


def test_oversize_bodies_get_413_while_streaming(server: tuple[str, Any],
                                                 caplog: pytest.LogCaptureFixture,
                                                 late_access_log: None) -> None:
    url, app = server
    limit = app.state.wildvision.config.max_body_bytes
    size = 3_000_000  # 15x the limit
    caplog.set_level(logging.INFO, logger="wildvision.serve.access")
    with httpx.Client(base_url=url) as c:
        declared = c.post("/v1/classify", content=os.urandom(size))  # has Content-Length

        def chunks() -> Iterator[bytes]:  # no Content-Length: only counting can catch it
            for _ in range(size // 65536):
                yield b"\xff" * 65536

        streamed = c.post("/v1/classify", content=chunks(), headers={"X-Request-ID": "big-1"})
        multi = c.post("/v1/classify/batch", files=[("files", ("a.jpg", os.urandom(size)))])
        for r in (declared, streamed, multi):
            assert r.status_code == 413, r.text
            assert r.json()["error_type"] == "PayloadTooLarge"
        # the connection and the server are fine afterwards
        assert c.post("/v1/classify", content=jpeg(3)).status_code == 200
    logged = [rec.__dict__["fields"] for rec in access_lines(caplog, ["big-1"])["big-1"]]
    assert len(logged) == 1
    assert logged[0]["status"] == 413
    # refused as soon as the count passed the limit, not after reading all 3 MB
    assert limit < logged[0]["bytes_in"] < limit + 4 * 65536


# -- limits: concurrency and time --------------------------------------------------------------
def test_requests_over_the_concurrency_bound_get_503_at_once(big_png: bytes) -> None:
    cfg = ServeConfig(model=str(TINY), max_concurrency=1, max_batch_files=32, batch_size=4)
    with running_server(cfg) as (url, app):
        service = app.state.wildvision
        slow: dict[str, Any] = {}

        def run_slow() -> None:
            files = [("files", (f"big{i}.png", big_png, "image/png")) for i in range(8)]
            slow["r"] = httpx.post(url + "/v1/classify/batch", files=files, timeout=120)

        t = threading.Thread(target=run_slow)
        t.start()
        wait_until(lambda: service.running == 1)  # the slow batch holds the only slot

        async def burst() -> list[Any]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                return list(await asyncio.gather(*[
                    c.post("/v1/classify", content=jpeg(i)) for i in range(8)]))

        rejected = asyncio.run(burst())
        still_running = service.running == 1
        t.join(120)
        # all answered while the slot was still taken: rejected at once, not queued
        assert still_running, "the slow batch ended before the burst: inconclusive"
        assert [r.status_code for r in rejected] == [503] * 8
        for r in rejected:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error_type"] == "ServiceUnavailable"
        assert slow["r"].status_code == 200
        assert all(d["ok"] for d in slow["r"].json()["results"])
        wait_until(lambda: service.running == 0)
        assert httpx.post(url + "/v1/classify", content=jpeg(0)).status_code == 200


def test_burst_over_the_bound_gives_only_200_or_503(big_png: bytes) -> None:
    cfg = ServeConfig(model=str(TINY), max_concurrency=1, max_pending=64, batch_size=4)
    with running_server(cfg) as (url, app):

        async def burst() -> list[Any]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
                files = [("files", (f"{i}.png", big_png, "image/png")) for i in range(3)]
                return list(await asyncio.gather(*[
                    c.post("/v1/classify/batch", files=files) for _ in range(24)]))

        responses = asyncio.run(burst())
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        assert 503 in statuses and 200 in statuses, statuses
        for r in responses:
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1
            else:
                body = r.json()
                assert body["count"] == 3 and body["failed"] == 0
        assert app.state.wildvision.running == 0
        assert not {s for s in app.state.wildvision.counts if s >= 500} - {503}


def test_slow_inference_gets_504_and_keeps_its_slot_until_done(big_png: bytes) -> None:
    cfg = ServeConfig(model=str(TINY), max_concurrency=1, request_timeout_s=0.3,
                      batch_size=4)
    with running_server(cfg) as (url, app):
        files = [("files", (f"{i}.png", big_png, "image/png")) for i in range(6)]
        r = httpx.post(url + "/v1/classify/batch", files=files, timeout=60)
        assert r.status_code == 504, r.text
        assert r.json()["error_type"] == "Timeout"
        # answered while the work (6 big decodes, over a second) still runs, and that
        # abandoned work keeps its slot: no unbounded pile-up behind timeouts
        assert app.state.wildvision.running == 1
        busy = httpx.post(url + "/v1/classify", content=jpeg(0))
        assert busy.status_code == 503
        wait_until(lambda: app.state.wildvision.running == 0, timeout=60)
        assert httpx.post(url + "/v1/classify", content=jpeg(0)).status_code == 200


# -- auth, request ids, logs, errors -----------------------------------------------------------
def test_api_key_auth(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"# service keys\n{API_KEY}\n\nother-key-abcdefghijklmnop\n")
    key_file.chmod(0o600)
    with running_server(ServeConfig(model=str(TINY), api_key_file=str(key_file))) as (url, _):
        img = jpeg(0)
        missing = httpx.post(url + "/v1/classify", content=img)
        assert missing.status_code == 401
        assert missing.json()["error_type"] == "Unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = httpx.post(url + "/v1/classify", content=img,
                           headers={"Authorization": f"Bearer {API_KEY}x"})
        assert wrong.status_code == 401
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.post(url + "/v1/classify", content=img,
                          headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        assert httpx.post(url + "/v1/classify", content=img,
                          headers={"X-API-Key": "other-key-abcdefghijklmnop"}).status_code == 200
        assert httpx.get(url + "/v1/models", headers={"X-API-Key": API_KEY}).status_code == 200
        # probes stay open for the orchestrator
        assert httpx.get(url + "/healthz").status_code == 200
        assert httpx.get(url + "/readyz").status_code == 200


def test_no_auth_when_no_keys(server: tuple[str, Any]) -> None:
    url, _ = server
    r = httpx.post(url + "/v1/classify", content=jpeg(0),
                   headers={"Authorization": "Bearer whatever"})
    assert r.status_code == 200


def test_request_ids_and_one_json_log_line_per_request(
        server: tuple[str, Any], caplog: pytest.LogCaptureFixture,
        late_access_log: None) -> None:
    url, _ = server
    caplog.set_level(logging.INFO, logger="wildvision.serve.access")
    r1 = httpx.post(url + "/v1/classify", content=jpeg(0), headers={"X-Request-ID": "abc-123"})
    r2 = httpx.post(url + "/v1/classify", content=b"junk",
                    headers={"X-Request-ID": "bad id with spaces\x01"})
    r3 = httpx.get(url + "/healthz")
    assert r1.headers["x-request-id"] == "abc-123"
    generated = r2.headers["x-request-id"]
    assert generated != "bad id with spaces\x01" and len(generated) == 32
    assert len(r3.headers["x-request-id"]) == 32
    from wildvision.serve import JsonLogFormatter

    fmt = JsonLogFormatter()
    ids = ["abc-123", generated, r3.headers["x-request-id"]]
    lines = {rid: [json.loads(fmt.format(rec)) for rec in recs]  # what the CLI writes to stderr
             for rid, recs in access_lines(caplog, ids).items()}
    ok = lines["abc-123"]
    assert len(ok) == 1
    assert ok[0]["path"] == "/v1/classify" and ok[0]["status"] == 200
    assert ok[0]["model_version"] == "0.0.1"
    assert ok[0]["decision"] == r1.json()["decision"]
    assert ok[0]["latency_ms"] > 0
    bad = lines[generated]
    assert len(bad) == 1 and bad[0]["status"] == 422
    assert bad[0]["error_type"] == "InvalidImageError"
    assert len(lines[r3.headers["x-request-id"]]) == 1


def test_internal_errors_are_generic_500s() -> None:
    app = create_app(ServeConfig(model=str(TINY)))

    def explode() -> None:
        raise RuntimeError("secret detail /etc/passwd")

    app.add_api_route("/explode", explode)  # a handler bug, as a new route could have
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started)
        r = httpx.get(f"http://127.0.0.1:{port}/explode")
        assert r.status_code == 500
        assert r.json()["error_type"] == "InternalServerError"
        assert "secret" not in r.text and "Traceback" not in r.text
        assert r.json()["request_id"] == r.headers["x-request-id"]
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def test_readyz_reports_a_model_that_fails_to_load(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in TINY.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "model.onnx").write_bytes(b"not the model the card hashed")
    from fastapi.testclient import TestClient

    with TestClient(create_app(ServeConfig(model=str(broken)))) as c:
        wait_until(lambda: c.get("/readyz").json()["status"] != "loading")
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error_type"] == "ModelIntegrityError"
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/classify", content=jpeg(0))
        assert r.status_code == 503 and r.json()["error_type"] == "ModelLoadError"


# -- config ------------------------------------------------------------------------------------
def test_serve_config_validation_and_json_roundtrip(tmp_path: Path) -> None:
    assert serve_config.DEFAULT_MAX_PIXELS == DEFAULT_MAX_PIXELS
    cfg = ServeConfig(model="m", max_concurrency=3, thresholds={"ivory": {"flag": 0.9}},
                      api_keys=("k" * 20,))
    assert ServeConfig.from_json(cfg.to_json()) == cfg
    assert cfg.pending_limit == 12
    for bad in ({"max_concurrency": 0}, {"max_body_bytes": -1}, {"request_timeout_s": 0},
                {"max_pending": 1, "max_concurrency": 2}, {"api_keys": ("",)}):
        with pytest.raises(ConfigError):
            ServeConfig(**bad)
    with pytest.raises(ConfigError):
        ServeConfig.from_json('{"modle": "typo"}')
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="no API key"):
        load_api_keys(empty)
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="16 characters"):
        load_api_keys(short)
    with pytest.raises(ConfigError, match="cannot read"):
        load_api_keys(tmp_path / "missing")


# -- the CLI, as a real process with two workers -----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_serve_subprocess_with_workers(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "wildvision.cli", "serve", "--model", str(TINY), "--port",
         str(port), "--workers", "2", "--api-key-file", str(key_file), "--max-body-mb", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
            try:
                if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "wildvision serve did not become ready"
            time.sleep(0.2)
        auth = {"Authorization": f"Bearer {API_KEY}"}
        # generous timeouts: on a loaded 2-core machine the second worker may still be
        # loading its model when the first answers /readyz
        r = httpx.post(url + "/v1/classify", content=jpeg(7),
                       headers={**auth, "X-Request-ID": "cli-req-1"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == "tiny-test"
        assert httpx.post(url + "/v1/classify", content=jpeg(7), timeout=60).status_code == 401
        big = httpx.post(url + "/v1/classify", content=b"\0" * 2_000_000, headers=auth,
                         timeout=60)
        assert big.status_code == 413
        # both workers have loaded the model before the server is stopped
        deadline = time.monotonic() + 60
        while sum(httpx.get(url + "/readyz", timeout=30).status_code == 200
                  for _ in range(8)) < 8:
            assert time.monotonic() < deadline, "a worker never became ready"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    lines = []
    for line in err.decode().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            lines.append(json.loads(line))
    mine = [d for d in lines if d.get("request_id") == "cli-req-1"]
    assert len(mine) == 1, err.decode()[-3000:]
    assert mine[0]["status"] == 200 and mine[0]["path"] == "/v1/classify"
    assert mine[0]["model_version"] == "0.0.1" and "decision" in mine[0]
    assert sum(1 for d in lines if d.get("message") == "model loaded") == 2  # one per worker


def test_cli_serve_fails_fast_on_unknown_model() -> None:
    from wildvision.cli import main

    assert main(["serve", "--model", "no-such-model-xyz", "--port", str(_free_port())]) == 1


# -- hardening ---------------------------------------------------------------------------------
def test_timed_out_work_holding_every_slot_makes_readyz_not_ready(big_png: bytes) -> None:
    """Work past its 504 held every slot while /readyz said 200: a load balancer kept sending
    traffic that could only get 503."""
    cfg = ServeConfig(model=str(TINY), max_concurrency=1, request_timeout_s=0.3, batch_size=4)
    with running_server(cfg) as (url, app):
        files = [("files", (f"{i}.png", big_png, "image/png")) for i in range(6)]
        assert httpx.post(url + "/v1/classify/batch", files=files, timeout=60).status_code == 504
        ready = httpx.get(url + "/readyz")
        if app.state.wildvision.running:  # the abandoned work still runs
            assert ready.status_code == 503, ready.text
            assert ready.json()["status"] == "saturated" and ready.json()["overrun"] == 1
            assert "retry-after" in ready.headers
        wait_until(lambda: app.state.wildvision.running == 0, timeout=60)
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 200 and ready.json()["overrun"] == 0


def test_many_scan_jpegs_are_refused_and_normal_requests_still_served() -> None:
    from make_crafted import many_scans_jpeg

    bomb = many_scans_jpeg(side=2048, extra_scans=400)
    cfg = ServeConfig(model=str(TINY), max_concurrency=2, request_timeout_s=20)
    with running_server(cfg) as (url, _):
        for _ in range(4):
            r = httpx.post(url + "/v1/classify", content=bomb, timeout=60)
            assert r.status_code == 422, r.text
            assert r.json()["error_type"] == "ImageTooLargeError"
            assert "scans" in r.json()["message"]
        assert httpx.post(url + "/v1/classify", content=jpeg(1), timeout=60).status_code == 200
        assert httpx.get(url + "/readyz").status_code == 200


def test_docs_need_no_cdn_and_the_schema_needs_the_key(tmp_path: Path) -> None:
    """/docs loaded Swagger UI from a CDN and, like /openapi.json, needed no key."""
    cfg = ServeConfig(model=str(TINY), api_keys=(API_KEY,))
    with running_server(cfg) as (url, _):
        for page in ("/docs", "/redoc"):
            assert httpx.get(url + page, headers={"X-API-Key": API_KEY}).status_code == 404
        assert httpx.get(url + "/openapi.json").status_code == 401
        schema = httpx.get(url + "/openapi.json", headers={"X-API-Key": API_KEY})
        assert schema.status_code == 200
        assert "/v1/classify" in schema.json()["paths"]
        assert "/openapi.json" not in schema.json()["paths"]


def test_every_logger_writes_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """python-multipart's warnings reached stderr as plain text, breaking `jq` on the log."""
    from wildvision.serve._app import configure_logging

    names = ("", "wildvision.serve", "uvicorn.error")
    saved = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).level,
                 logging.getLogger(n).propagate) for n in names}
    try:
        for n in names:  # as in a fresh `wildvision serve` process
            logger = logging.getLogger(n)
            logger.handlers = [h for h in logger.handlers
                               if not getattr(h, "_wildvision", False)]
        configure_logging()
        logging.getLogger("python_multipart.multipart").warning(
            "Skipping data after last boundary")
        logging.getLogger("wildvision.serve").info("model loaded")
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]
        assert [r["logger"] for r in records] == ["python_multipart.multipart",
                                                  "wildvision.serve"]
        assert records[0]["level"] == "warning"
    finally:
        for n, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(n)
            logger.handlers = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def test_uvicorn_connection_limits_come_from_the_config() -> None:
    """Idle connections stayed open for minutes and nothing bounded their number."""
    cfg = ServeConfig(model=str(TINY), max_concurrency=1, max_pending=2, max_connections=4,
                      keep_alive_s=0.5, max_header_bytes=4096)
    opts = cfg.uvicorn_options()
    assert opts == {"timeout_keep_alive": 0.5, "limit_concurrency": 4,
                    "h11_max_incomplete_event_size": 4096}
    assert ServeConfig(max_concurrency=2).uvicorn_options()["limit_concurrency"] == 4 * 8 + 16
    with pytest.raises(ConfigError, match="max_connections"):
        ServeConfig(max_concurrency=2, max_connections=3)
    with running_server(cfg, **opts) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        # A kept-alive connection is closed once idle for keep_alive_s.
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            response = b""
            while not response.endswith(b'{"status":"ok"}'):
                chunk = conn.recv(65536)
                assert chunk, response
                response += chunk
            assert response.startswith(b"HTTP/1.1 200")
            t0 = time.monotonic()
            assert conn.recv(65536) == b""  # closed by the server
            assert time.monotonic() - t0 < 5
        # Past max_connections open connections, uvicorn answers 503 itself.
        idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(4)]
        try:
            time.sleep(0.3)
            assert httpx.get(url + "/healthz", timeout=10).status_code == 503
        finally:
            for c in idle:
                c.close()
        wait_until(lambda: httpx.get(url + "/healthz", timeout=10).status_code == 200)
