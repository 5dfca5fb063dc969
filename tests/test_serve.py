"""`safeclip serve`'s embeddings route on a real uvicorn server: equal to the in-process Encoder
through httpx and the official openai client, batching, the bounded queue, deadlines, API keys,
limits, health and metrics."""

from __future__ import annotations

import base64
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.serve import ServeSettings, create_app
from serve_server import running

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.service

MODEL = "tiny"
TEXTS = ["a red bicycle leaning on a wall", "two dogs playing in the snow", "a bowl of ramen with eggs"]
KEY = "sk-test-4f1d9c2e7b"


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / f"picture{index}.png")
    return root


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def settings(**overrides) -> ServeSettings:
    return ServeSettings(model_name=MODEL, **overrides)


def app_for(tiny_model_dir, api_keys=(), **overrides):
    return create_app(tiny_model_dir, settings=settings(**overrides), backend="torch", device="cpu", api_keys=api_keys)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param"}
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
    return error


def test_texts_and_images_equal_the_encoder_through_httpx_and_openai(tiny_model_dir, encoder, pictures):
    app = app_for(tiny_model_dir, image_root=pictures)
    with running(app) as url:
        floats = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": TEXTS}).json()
        assert [item["index"] for item in floats["data"]] == [0, 1, 2]
        assert floats["usage"]["prompt_tokens"] > len(TEXTS)
        served = np.array([item["embedding"] for item in floats["data"]], dtype=np.float32)
        assert cosines(served, encoder.encode_text(TEXTS)).min() > 0.9999

        encoded = httpx.post(f"{url}/v1/embeddings",
                             json={"model": MODEL, "input": TEXTS, "encoding_format": "base64"}).json()
        decoded = np.array([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
                            for item in encoded["data"]])
        np.testing.assert_array_equal(decoded, served)

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        answer = client.embeddings.create(model=MODEL, input=TEXTS)
        assert cosines(np.array([item.embedding for item in answer.data]), served).min() > 0.9999
        single = client.embeddings.create(model=MODEL, input=TEXTS[1], encoding_format="float")
        assert cosines(np.array([single.data[0].embedding]), served[1:2]).min() > 0.9999

        files = sorted(pictures.iterdir())
        expected = encoder.encode_image(files)
        by_url = client.embeddings.create(model=MODEL, input=[data_url(f) for f in files],
                                          extra_body={"modality": "image"})
        assert cosines(np.array([item.embedding for item in by_url.data]), expected).min() > 0.9999
        by_path = httpx.post(f"{url}/v1/embeddings",
                             json={"model": MODEL, "modality": "image", "input": [f.name for f in files]}).json()
        assert cosines(np.array([item["embedding"] for item in by_path["data"]]), expected).min() > 0.9999

        (pictures / "link.png").symlink_to("/etc/hostname")
        for escape in ("../../../etc/passwd", "/etc/passwd", "link.png"):
            response = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "modality": "image",
                                                                "input": ["picture0.png", escape]})
            assert_error(response, 403, "input[1]")


def test_image_paths_are_refused_without_an_image_root(tiny_model_dir, pictures):
    with running(app_for(tiny_model_dir)) as url:
        response = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "modality": "image",
                                                            "input": [str(pictures / "picture0.png")]})
        assert_error(response, 422, "input[0]")


def test_concurrent_requests_share_model_calls(tiny_model_dir, encoder):
    app = app_for(tiny_model_dir, max_batch_size=64, max_wait_ms=50)
    texts = [f"a photo number {i} of a small boat" for i in range(32)]
    with running(app) as url, httpx.Client(base_url=url) as client:
        def embed(text):
            return client.post("/v1/embeddings", json={"model": MODEL, "input": text}).json()["data"][0]["embedding"]

        with ThreadPoolExecutor(32) as pool:
            served = np.array(list(pool.map(embed, texts)), dtype=np.float32)
        assert cosines(served, encoder.encode_text(texts)).min() > 0.9999
        metrics = client.get("/metrics").text
    calls = _sample(metrics, 'safeclip_batch_size_count{modality="text"}')
    assert _sample(metrics, 'safeclip_batch_size_sum{modality="text"}') == 32
    assert calls < 32, f"32 concurrent requests took {calls} model calls"


def _sample(metrics: str, name: str) -> float:
    line = next(line for line in metrics.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def _slowed(tiny_model_dir, seconds: float) -> Encoder:
    slow = Encoder.load(tiny_model_dir, backend="torch", device="cpu")
    encode_text = slow.encode_text

    def slowly(texts, **options):
        time.sleep(seconds)
        return encode_text(texts, **options)

    slow.encode_text = slowly
    return slow


def test_a_full_queue_answers_429_with_retry_after_and_every_200_is_right(tiny_model_dir, encoder):
    app = create_app(_slowed(tiny_model_dir, 0.3), settings=settings(max_batch_size=1, max_queue=2, retry_after_s=3),
                     api_keys=())
    texts = [f"caption {i} of a quiet street" for i in range(12)]
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        with ThreadPoolExecutor(len(texts)) as pool:
            responses = list(pool.map(lambda t: client.post("/v1/embeddings", json={"model": MODEL, "input": t}),
                                      texts))
        metrics = client.get("/metrics").text
    statuses = [response.status_code for response in responses]
    assert set(statuses) == {200, 429}, statuses
    assert 1 <= statuses.count(200) <= 6
    for text, response in zip(texts, responses):
        if response.status_code == 429:
            assert response.headers["retry-after"] == "3"
            assert response.json()["error"]["type"] == "rate_limit_error"
        else:
            vector = np.array([response.json()["data"][0]["embedding"]])
            assert cosines(vector, encoder.encode_text([text])).min() > 0.9999
    assert _sample(metrics, 'safeclip_rejected_total{modality="text"}') == statuses.count(429)
    assert 'safeclip_requests_total{route="/v1/embeddings",status="429"}' in metrics


def test_a_request_past_its_deadline_gets_503_and_the_batch_goes_on(tiny_model_dir):
    app = create_app(_slowed(tiny_model_dir, 0.6), settings=settings(request_timeout_s=0.2), api_keys=())
    with running(app) as url:
        assert_error(httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": "late"}), 503)
        time.sleep(0.6)
        metrics = httpx.get(f"{url}/metrics").text
        assert _sample(metrics, 'safeclip_batch_size_count{modality="text"}') == 1


def test_api_keys_are_required_compared_and_never_logged(tiny_model_dir, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    with running(app_for(tiny_model_dir, api_keys=(KEY, "sk-other"))) as url:
        body = {"model": MODEL, "input": "a cat"}
        missing = httpx.post(f"{url}/v1/embeddings", json=body)
        wrong = httpx.post(f"{url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}x"})
        right = httpx.post(f"{url}/v1/embeddings", json=body, headers={"Authorization": f"Bearer {KEY}"})
        for response in (missing, wrong):
            assert_error(response, 401)["type"] == "authentication_error"
        assert right.status_code == 200
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
        assert len(client.embeddings.create(model=MODEL, input="a dog").data) == 1
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0).embeddings.create(
                model=MODEL, input="a dog")
        assert httpx.get(f"{url}/healthz").status_code == 200
    captured = capfd.readouterr()
    for text in (caplog.text, captured.out, captured.err, missing.text, wrong.text):
        assert KEY not in text
    assert "/v1/embeddings" in caplog.text  # the access log was captured, without the key


def test_bad_requests_get_one_json_error_naming_the_field(tiny_model_dir, pictures):
    app = app_for(tiny_model_dir, max_inputs=4, max_text_chars=40, max_image_pixels=2000, max_body_bytes=20_000)
    big = io.BytesIO()
    Image.new("RGB", (50, 50)).save(big, format="PNG")
    big_url = "data:image/png;base64," + base64.b64encode(big.getvalue()).decode()
    with running(app) as url, httpx.Client(base_url=url) as client:
        def post(body, route="/v1/embeddings"):
            return client.post(route, json={"model": MODEL, **body})

        assert_error(post({"input": "x" * 41}), 413, "input[0]")
        assert_error(post({"input": ["a", "b", "c", "d", "e"]}), 413, "input")
        assert_error(post({"input": []}), 422, "input")
        assert_error(post({"input": ["fine", "  "]}), 422, "input[1]")
        assert_error(post({"input": [[1, 2, 3]]}), 422, "input[0]")
        assert_error(post({"input": "y" * 30_000}), 413, "body")
        streamed = (b"x" * 1000 for _ in range(30))  # no Content-Length: counted as it arrives
        assert_error(client.post("/v1/embeddings", content=streamed, headers={"content-type": "application/json"}),
                     413, "body")
        assert_error(post({"input": "a cat", "modalty": "image"}), 422, "modalty")
        assert_error(post({"input": "a cat", "dimensions": 3}), 422, "dimensions")
        assert_error(post({"input": "a cat", "encoding_format": "int8"}), 422, "encoding_format")
        assert_error(client.post("/v1/embeddings", json={"model": "other", "input": "a cat"}), 404, "model")
        assert_error(post({"modality": "image", "input": ["data:image/png;base64,not*base64"]}), 422, "input[0]")
        assert_error(post({"modality": "image", "input": ["data:image/png;base64,aGVsbG8="]}), 422, "input[0]")
        assert_error(post({"modality": "image", "input": [data_url(pictures / "picture0.png"), big_url]}), 413,
                     "input[1]")
        assert_error(post({"modality": "sound", "input": "a cat"}), 422, "modality")
        assert_error(client.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}),
                     400)
        assert_error(client.get("/v1/nowhere"), 404)
        assert_error(client.get("/v1/embeddings"), 405)
        assert_error(post({"input": "a cat"}, route="/v1/search"), 404)
        assert post({"input": "a cat"}).status_code == 200  # nothing above broke the server


def test_health_readiness_and_metrics(tiny_model_dir):
    with running(app_for(tiny_model_dir)) as url, httpx.Client(base_url=url) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json()["status"] == "ready"
        assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
        client.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]})
        client.get("/nowhere")
        metrics = client.get("/metrics").text
    for line in ('safeclip_requests_total{route="/v1/embeddings",status="200"} 1.0',
                 'safeclip_requests_total{route="unmatched",status="404"} 1.0',
                 'safeclip_request_seconds_count{route="/v1/embeddings"} 1.0',
                 'safeclip_batch_size_sum{modality="text"} 2.0',
                 'safeclip_queue_depth{modality="text"} 0.0'):
        assert line in metrics, line
