"""The service under attack and overload, against one real `pam serve` (a subprocess on free
ports, API keys on, one replica): stalled bodies, tenants probing each other's photos, huge
photos, hostile JSON, id aliases, out-of-range numbers, the metrics port's interface, the
OpenAPI document's constraints and the 1-5 scale of the shown scores."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import ROOT, free_port
from tests.online.test_api import expect_error

pytestmark = [pytest.mark.ray]
ALPHA, BETA = {"X-API-Key": "key-alpha"}, {"X-API-Key": "key-beta"}


@pytest.fixture(scope="module")
def served(feature_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    keys = tmp / "keys.json"
    keys.write_text(json.dumps({"key-alpha": "alpha", "key-beta": "beta"}))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    command = [sys.executable, "-m", "pam.cli", "serve", "--features", feature_env["feature_root"],
               "--model", feature_env["model"], "--photos", feature_env["photos_root"],
               "--users", f"sqlite:///{tmp / 'users.db'}", "--api-keys", str(keys), "--port", str(port),
               "--num-cpus", "2", "--duration", "1800"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline, line = time.time() + 180, ""
        while time.time() < deadline:
            line = proc.stderr.readline()
            if "listening on" in line or (not line and proc.poll() is not None):
                break
        match = re.search(r"listening on (http://\S+) .*Prometheus metrics (http://\S+)/metrics\)", line)
        assert match, f"no listening line; exit {proc.poll()}: {line}"
        ingress = re.search(r"HAProxy's metrics .*: (http://\S+)/metrics", proc.stderr.readline())
        assert ingress, "no line for the ingress's metrics"
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
        yield {"url": match.group(1), "metrics": match.group(2), "ingress_metrics": ingress.group(1), "port": port,
               "env": feature_env,
               "thumbnails": tmp / "pam-thumbnails"}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


def call(served, method, path, headers=ALPHA, timeout=30, **kwargs) -> requests.Response:
    return requests.request(method, served["url"] + path, headers=headers, timeout=timeout, **kwargs)


def post_raw(served, path: str, body: bytes, headers=ALPHA) -> requests.Response:
    return call(served, "POST", path, headers={**headers, "Content-Type": "application/json"}, data=body)


def _png(width: int, height: int, mode: str = "RGB", noise: bool = True) -> bytes:
    if noise:  # a smooth picture of that size (a few MB as PNG)
        rng = np.random.default_rng(width)
        small = rng.integers(0, 255, (max(1, height // 50), max(1, width // 50), len(mode)), dtype=np.uint8)
        image = Image.fromarray(small, mode).resize((width, height))
    else:  # one colour: a few hundred kB whatever the size
        image = Image.new(mode, (width, height), (10, 120, 200, 255)[:len(mode)])
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _jpeg(color, size=(300, 200)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


# ---------------------------------------------------------------- slow and stalled bodies
def test_stalled_bodies_hold_no_capacity(served):
    """64 connections send headers and one byte of a 100 kB body, then wait; health and re-rank
    still answer within a second, and a stalled request gets a 408."""
    env = served["env"]
    call(served, "POST", "/v1/users/slow-victim/album", json={"image_ids": env["ids"][:10]})
    host, port = served["url"][len("http://"):].split(":")
    stalled = []
    try:
        for _ in range(64):
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(b"POST /v1/users/slow-victim/rerank HTTP/1.1\r\nHost: x\r\nX-API-Key: key-alpha\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
            stalled.append(sock)
        time.sleep(1.0)  # every stalled request has reached the replica
        for _ in range(3):
            started = time.perf_counter()
            assert call(served, "GET", "/v1/healthz", timeout=5).status_code == 200
            reply = call(served, "POST", "/v1/users/slow-victim/rerank", json={"candidates": env["ids"][:10]},
                         timeout=5)
            assert reply.status_code == 200, reply.text
            assert time.perf_counter() - started < 1.0
        stalled[0].settimeout(30)
        answer = b""
        while b"body_timeout" not in answer:  # headers and body may come in separate segments
            chunk = stalled[0].recv(4096)
            if not chunk:
                break
            answer += chunk
        answer = answer.decode("latin-1")
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        assert "body_timeout" in answer
    finally:
        for sock in stalled:
            sock.close()


def test_overload_is_shed_with_retry_after(served):
    """64 connections re-ranking 1,000 candidates: every answer is a 200 or a 503 with Retry-After."""
    env = served["env"]
    call(served, "POST", "/v1/users/busy/album", json={"image_ids": env["ids"]})
    body = json.dumps({"candidates": (env["ids"] * 21)[:1000]})
    statuses: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def client():
        with requests.Session() as http:
            for _ in range(4):
                reply = http.post(f"{served['url']}/v1/users/busy/rerank", data=body, timeout=60,
                                  headers={**ALPHA, "Content-Type": "application/json"})
                with lock:
                    statuses.append((reply.status_code, reply.headers.get("Retry-After")))

    threads = [threading.Thread(target=client) for _ in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(statuses) == 256
    assert {s for s, _ in statuses} <= {200, 503}, statuses
    assert all(retry for s, retry in statuses if s == 503)
    assert any(s == 200 for s, _ in statuses)


# ---------------------------------------------------------------- tenants and photos
def test_uploads_live_in_the_tenant_namespace(served):
    env = served["env"]
    red = [("files", ("red.jpg", _jpeg((220, 20, 20)), "image/jpeg"))]
    blue = [("files", ("blue.jpg", _jpeg((20, 20, 220), (200, 300)), "image/jpeg"))]
    mine = call(served, "POST", "/v1/photos", files=red, data={"image_ids": "trip/best.jpg"}).json()["results"][0]
    assert mine["source"] == "scored"
    # beta sees nothing of alpha's photo: no thumbnail, no scores, no album entry
    expect_error(call(served, "GET", "/v1/photos/thumbnail", params={"image_id": "trip/best.jpg"}, headers=BETA),
                 404, "trip/best.jpg")
    expect_error(call(served, "POST", "/v1/photos/score", json={"image_ids": ["trip/best.jpg"]}, headers=BETA),
                 404, "trip/best.jpg")
    expect_error(call(served, "POST", "/v1/users/bob/album", json={"image_ids": ["trip/best.jpg"]}, headers=BETA),
                 404, "trip/best.jpg")
    # beta's own photo under the same id is beta's; alpha keeps its features
    theirs = call(served, "POST", "/v1/photos", files=blue, data={"image_ids": "trip/best.jpg"},
                  headers=BETA).json()["results"][0]
    assert theirs["source"] == "scored" and theirs["aes_score"] != pytest.approx(mine["aes_score"])
    again = call(served, "POST", "/v1/photos/score", json={"image_ids": ["trip/best.jpg"]}).json()["results"][0]
    assert again["aes_score"] == pytest.approx(mine["aes_score"])
    own = call(served, "GET", "/v1/photos/thumbnail", params={"image_id": "trip/best.jpg", "size": 64})
    assert own.status_code == 200 and "public" not in own.headers["Cache-Control"]
    assert Image.open(io.BytesIO(own.content)).convert("RGB").getpixel((5, 5))[0] > 150  # alpha's red
    # an upload never replaces a catalog photo (neither its features nor its thumbnail)
    catalog_id = env["ids"][0]
    before = call(served, "GET", "/v1/photos/thumbnail", params={"image_id": catalog_id}).content
    body = expect_error(call(served, "POST", "/v1/photos", files=blue, data={"image_ids": "./" + catalog_id}),
                        409, "catalog")
    assert body["taken"] == [catalog_id]
    assert call(served, "GET", "/v1/photos/thumbnail", params={"image_id": catalog_id}).content == before
    score = call(served, "POST", "/v1/photos/score", json={"image_ids": [catalog_id]}).json()["results"][0]
    assert score["aes_score"] == pytest.approx(env["aes_score"][catalog_id], abs=1e-6)
    # a tenant's photo joins its users' albums and re-ranks
    call(served, "POST", "/v1/users/ann/album", json={"image_ids": ["trip/best.jpg", catalog_id]})
    ranked = call(served, "POST", "/v1/users/ann/rerank", json={"candidates": ["trip/best.jpg", catalog_id]}).json()
    assert sorted(ranked["image_ids"]) == sorted(["trip/best.jpg", catalog_id])


def test_huge_photos_decode_at_bounded_size_or_get_413(served):
    """A 24-megapixel PNG and JPEG are accepted; a 10000 x 9999 RGBA PNG (a few hundred kB) gets
    a 413 naming the pixel limit; health answers while six big uploads run at once."""
    big_png = _png(6000, 4000)
    out = io.BytesIO()
    Image.open(io.BytesIO(big_png)).save(out, "JPEG", quality=80)
    big_jpeg = out.getvalue()
    for name, data in (("big.png", big_png), ("big.jpg", big_jpeg)):
        reply = call(served, "POST", "/v1/photos", files=[("files", (name, data, "image/png"))], timeout=120)
        assert reply.status_code == 200, reply.text
        assert reply.json()["results"][0]["source"] in ("scored", "store")
    bomb = _png(10000, 9999, "RGBA", noise=False)
    assert len(bomb) < 2_000_000
    body = expect_error(call(served, "POST", "/v1/photos", files=[("files", ("bomb.png", bomb, "image/png"))]),
                        413, "25000000", "pixels")
    assert body["limit"] == 25_000_000

    results: list[int] = []
    uploads = [threading.Thread(target=lambda k=k: results.append(call(
        served, "POST", "/v1/photos", files=[("files", (f"b{k}.png", big_png, "image/png"))],
        timeout=300).status_code)) for k in range(6)]
    for t in uploads:
        t.start()
    time.sleep(1)
    assert call(served, "GET", "/v1/readyz", timeout=5).json()["ready"]
    for t in uploads:
        t.join(300)
    assert results == [200] * 6


# ---------------------------------------------------------------- hostile JSON and ids
HOSTILE = [
    ("/v1/users/h1/rerank", b'{"items": []}', 422, "items"),
    ("/v1/rerank", b'{"queries": [{"user_id": "h1", "items": []}]}', 422, "items"),
    ("/v1/users/h1/ratings", b'{"ratings": [{"image_id": "ID0", "score": 1' + b"0" * 5000 + b"}]}", 422, "number"),
    ("/v1/users/h1/ratings", b'{"ratings": [{"image_id": "ID0", "score": 1e400}]}', 422, "finite"),
    ("/v1/users/h1/ratings", b'{"ratings": [{"image_id": "ID0", "score": NaN}]}', 422, "finite"),
    ("/v1/users/h1/rerank", b"[" * 100_000, 400, ""),
    ("/v1/users/h1/rerank", b'{"candidates": ["\\ud800"]}', 422, "invalid image id"),
    ("/v1/users/h1/album", b'{"image_ids": ["\\ud800x"]}', 422, "invalid image id"),
    ("/v1/users/h1/album", b'{"image_ids": ["a\\nb"]}', 422, "control"),
    ("/v1/photos/score", b'{"image_ids": ["\\udfff"]}', 422, "invalid image id"),
    ("/v1/users/h1/rerank", json.dumps({"items": [{"image_id": "x", "aes_score": 1e308, "attributes": [-1e308] * 10,
                                                   "content": [1e308] * 10}]}).encode(), 422, "finite"),
    ("/v1/users/h1/ratings", b'{"ratings": [{"image_id": "ID0", "score": 3}], "request_id": "abc\\n"}', 422,
     "request id"),
    ("/v1/users/h1/ratings", b'{"ratings": [{"image_id": "ID0", "score": 3}], "request_id": ""}', 422,
     "request id"),
]


@pytest.mark.parametrize(("path", "body", "status", "word"), HOSTILE)
def test_hostile_bodies_get_4xx(served, path, body, status, word):
    call(served, "POST", "/v1/users/h1/album", json={"image_ids": served["env"]["ids"][:5]})
    body = body.replace(b"ID0", served["env"]["ids"][0].encode())
    expect_error(post_raw(served, path, body), status, *([word] if word else []))
    assert call(served, "GET", "/v1/users/h1").json()["n_ratings"] == 0


def test_user_and_request_ids_are_checked_whole(served):
    for path in ("/v1/users/alice%0A", "/v1/users/alice%0A/album", "/v1/users/alice%0D%0A/next"):
        expect_error(call(served, "PUT" if path.count("/") == 3 else "GET", path), 400, "not allowed")
    expect_error(post_raw(served, "/v1/users/alice%0A/album", b'{"image_ids": ["x"]}'), 400, "not allowed")
    call(served, "PUT", "/v1/users/idem")
    expect_error(call(served, "POST", "/v1/users/idem/ratings", headers={**ALPHA, "Idempotency-Key": ""},
                      json={"ratings": [{"image_id": served["env"]["ids"][0], "score": 3}]}), 422, "request id")
    assert call(served, "GET", "/v1/users/idem").json()["n_ratings"] == 0


def test_aliases_of_one_photo_are_one_row(served):
    env = served["env"]
    online = Path(env["feature_root"]) / "_online" / f"model_version={env['model_version']}"
    files_before = set(online.glob("*.parquet")) if online.is_dir() else set()
    target = env["extra"][2]  # a file under the photos root that the store has not seen
    for k in range(1, 41):
        alias = "./" * k + target.replace("/", "//" if k % 2 else "/./")
        row = call(served, "POST", "/v1/photos/score", json={"image_ids": [alias]}).json()["results"][0]
        assert row["image_id"] == target
    new_files = set(online.glob("*.parquet")) - files_before
    assert len(new_files) == 1, new_files
    catalog = env["ids"][1]
    reply = call(served, "POST", "/v1/photos/score", json={"image_ids": ["./" + catalog, catalog + "/"]}).json()
    assert [r["image_id"] for r in reply["results"]] == [catalog, catalog]


def test_shown_scores_are_on_the_rating_scale_and_ranked_unclipped(served):
    env = served["env"]
    call(served, "POST", "/v1/users/one-five/album", json={"image_ids": env["ids"][:40]})
    call(served, "POST", "/v1/users/one-five/ratings", json={"ratings": [{"image_id": env["ids"][0], "score": 5}]})
    call(served, "POST", "/v1/users/one-five/ratings", json={"ratings": [{"image_id": env["ids"][1], "score": 1}]})
    reply = call(served, "POST", "/v1/users/one-five/rerank", json={"candidates": env["ids"][:40]}).json()
    assert reply["personalized"]
    assert all(1.0 <= s <= 5.0 for s in reply["scores"])
    assert reply["scores"] == sorted(reply["scores"], reverse=True)


# ---------------------------------------------------------------- the metrics port and the API document
def _listening_addresses(port: int) -> set[str]:
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.add(address if width == 32 else ".".join(str(b) for b in bytes.fromhex(address)[::-1]))
    return found


def test_metrics_listen_on_loopback_only(served):
    port = int(served["metrics"].rsplit(":", 1)[1])
    assert served["metrics"].startswith("http://127.0.0.1:")
    assert _listening_addresses(port) == {"127.0.0.1"}
    assert requests.get(f"{served['metrics']}/metrics", timeout=30).status_code == 200
    ingress_port = int(served["ingress_metrics"].rsplit(":", 1)[1])  # HAProxy's, beside Ray's
    assert served["ingress_metrics"].startswith("http://127.0.0.1:")
    assert _listening_addresses(ingress_port) == {"127.0.0.1"}
    assert "haproxy_backend_current_queue" in requests.get(f"{served['ingress_metrics']}/metrics", timeout=30).text


def test_openapi_keeps_every_constraint_the_service_enforces(served):
    """The document must keep these: a fuzzer reads them, so loosening one to pass it is a bug."""
    from serving.online import api_models as m

    doc = call(served, "GET", "/v1/openapi.json").json()

    def resolve(node):
        while "$ref" in node:
            node = doc["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
        return node

    def body(path, method="post"):
        return resolve(doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"])

    def params(path, method):
        return {p["name"]: p["schema"] for p in doc["paths"][path][method].get("parameters", [])}

    for path, ops in doc["paths"].items():
        if "{user_id}" in path:
            for method in ops:
                user = params(path, method)["user_id"]
                assert (user["pattern"], user["maxLength"]) == (m.USER_ID_PATTERN, 128), (path, method)
    rating = resolve(body("/v1/users/{user_id}/ratings")["properties"]["ratings"]["items"])
    assert (rating["properties"]["score"]["minimum"], rating["properties"]["score"]["maximum"]) == (1, 5)
    assert rating["properties"]["image_id"]["maxLength"] == m.MAX_IMAGE_ID_CHARS
    assert rating["properties"]["image_id"]["pattern"] == m.IMAGE_ID_PATTERN
    ratings = body("/v1/users/{user_id}/ratings")["properties"]
    assert ratings["ratings"]["maxItems"] == m.MAX_RATINGS_PER_CALL and ratings["ratings"]["minItems"] == 1
    request_id = ratings["request_id"]["anyOf"][0]
    assert (request_id["pattern"], request_id["maxLength"]) == (m.REQUEST_ID_PATTERN, m.MAX_REQUEST_ID_CHARS)
    rerank = body("/v1/users/{user_id}/rerank")["properties"]
    candidates = rerank["candidates"]
    assert (candidates["minItems"], candidates["maxItems"]) == (1, m.MAX_CANDIDATES)
    items = rerank["items"]
    assert (items["minItems"], items["maxItems"]) == (1, m.MAX_CANDIDATES)
    inline = resolve(items["items"])["properties"]
    assert (inline["aes_score"]["minimum"], inline["aes_score"]["maximum"]) == (-m.MAX_FEATURE_ABS, m.MAX_FEATURE_ABS)
    assert (inline["attributes"]["minItems"], inline["attributes"]["maxItems"]) == (10, 10)
    assert body("/v1/rerank")["properties"]["queries"]["maxItems"] == m.MAX_BULK_QUERIES
    assert body("/v1/users/{user_id}/album")["properties"]["image_ids"]["maxItems"] == m.MAX_ALBUM_IDS
    assert body("/v1/photos/score")["properties"]["image_ids"]["maxItems"] == m.MAX_SCORE_IDS
    thumb = params("/v1/photos/thumbnail", "get")
    assert thumb["size"]["enum"] == list(m.THUMBNAIL_SIZES)
    assert thumb["image_id"]["maxLength"] == m.MAX_IMAGE_ID_CHARS
    assert "201" in doc["paths"]["/v1/users/{user_id}"]["put"]["responses"]
    for code in ("400", "413", "422", "503"):
        assert code in doc["paths"]["/v1/users/{user_id}/rerank"]["post"]["responses"]
    wrong = call(served, "PATCH", "/v1/users/ann")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "GET, PUT, DELETE"
    wrong = call(served, "GET", "/v1/users/ann/rerank")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"


# ---------------------------------------------------------------- the fuzzer, last (it leaves data behind)
SCHEMATHESIS_EXAMPLES = 40  # per operation and phase: ~1,500 cases, about two minutes here


def test_schemathesis_finds_no_failure(served):
    """Every check schemathesis has (see tests/online/schemathesis.toml for the two exceptions
    JSON Schema cannot express), a fixed seed, against the real service through Serve's proxy."""
    cli = Path(sys.executable).parent / "schemathesis"
    if not cli.exists():
        pytest.skip("schemathesis is not installed (it is in the test extra)")
    command = [str(cli), "--no-color", "--config-file", str(Path(__file__).with_name("schemathesis.toml")), "run",
               f"{served['url']}/v1/openapi.json", "-H", "X-API-Key: key-alpha",
               "--max-examples", str(SCHEMATHESIS_EXAMPLES), "--seed", "13", "--request-timeout", "30"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert generated and int(generated.group(1)) >= 1000 and generated.group(1) == generated.group(2), out[-3000:]
