"""`safeclip serve`'s moderation and search routes on a real uvicorn server, against the library
(`moderate`, `safeclip search --json`), and the command itself in a new process."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.integrations import open_store
from safeclip_sdk.runtime.classify import moderate
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.serve import ServeSettings, create_app
from serve_server import free_port, running, wait_ready
from test_search import TEXTS, _side_by_side
from test_serve import _sample

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.service

MODEL = "tiny"


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def test_moderations_equal_the_library_through_httpx_and_openai(hysac_world):
    encoder = Encoder.load(hysac_world["folder"], backend="torch", device="cpu")
    texts = hysac_world["safe_texts"][:2] + hysac_world["unsafe_texts"][:2]
    images = hysac_world["safe_images"][:1] + hysac_world["unsafe_images"][:1]
    expected = moderate(encoder, texts=texts, images=images)
    assert [m.flagged for m in expected] == [False, False, True, True, False, True]
    app = create_app(encoder, settings=ServeSettings(model_name=MODEL), api_keys=())
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        answer = client.moderations.create(model=MODEL, input=texts)
        assert answer.id.startswith("modr-") and answer.model == MODEL
        for result, wanted in zip(answer.results, expected):
            scored = result.model_dump()
            assert result.flagged == wanted.flagged
            assert scored["categories"]["unsafe"] == wanted.categories["unsafe"]
            assert scored["category_scores"]["unsafe"] == pytest.approx(wanted.category_scores["unsafe"], abs=1e-5)
        parts = [{"type": "image_url", "image_url": {"url": data_url(images[1])}}, {"type": "text", "text": texts[0]},
                 {"type": "image_url", "image_url": {"url": data_url(images[0])}}]
        mixed = httpx.post(f"{url}/v1/moderations", json={"input": parts}).json()["results"]
        assert [r["flagged"] for r in mixed] == [True, False, False]
        assert mixed[0]["category_scores"]["unsafe"] == pytest.approx(expected[5].category_scores["unsafe"], abs=1e-5)
        bad_part = httpx.post(f"{url}/v1/moderations", json={"input": [{"type": "audio", "data": "x"}]})
        assert bad_part.status_code == 422 and bad_part.json()["error"]["param"] == "input[0]"
        metrics = httpx.get(f"{url}/metrics").text
    assert 'safeclip_flagged_items_total{category="unsafe"} 3.0' in metrics


def test_a_model_without_a_classifier_answers_400(tiny_model_dir):
    app = create_app(tiny_model_dir, settings=ServeSettings(model_name=MODEL), backend="torch", device="cpu",
                     api_keys=())
    with running(app) as url:
        response = httpx.post(f"{url}/v1/moderations", json={"input": "a cat"})
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "model" and "no classifier" in response.json()["error"]["message"]
        with pytest.raises(openai.BadRequestError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0).moderations.create(input="a cat")


def test_search_equals_safeclip_search(tmp_path, tiny_model_dir):
    encoder = Encoder.load(tiny_model_dir, backend="torch", device="cpu")
    store = open_store(tmp_path / "db")
    _side_by_side(store, "photos", encoder.space.to_stored(encoder.encode_text(TEXTS)), tiny_model_dir, encoder,
                  threshold=0.25)
    store.close()
    runner = CliRunner()
    args = ["search", "--qdrant", str(tmp_path / "db"), "--collection", "photos", "--model", str(tiny_model_dir),
            "--json", "-k", "4"]
    expected = {mode: json.loads(runner.invoke(cli, [*args, "--text", TEXTS[1], "--mode", mode]).output)
                for mode in ("safe", "query-side")}
    filtered = json.loads(runner.invoke(cli, [*args, "--text", TEXTS[4], "--max-score", "threshold"]).output)

    app = create_app(encoder, store=str(tmp_path / "db"), collection="photos", settings=ServeSettings(), api_keys=())
    with running(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/readyz").json()["collection"] == "photos"
        for mode, wanted in expected.items():
            served = client.post("/v1/search", json={"input": TEXTS[1], "k": 4, "mode": mode}).json()
            assert (served["mode"], served["vector"], served["collection"]) == \
                (wanted["mode"], wanted["vector"], wanted["collection"])
            assert [r["id"] for r in served["results"]] == [r["id"] for r in wanted["results"]]
            assert [r["score"] for r in served["results"]] == pytest.approx([r["score"] for r in wanted["results"]])
            assert [r["unsafe_score"] for r in served["results"]] == \
                [r["payload"]["safeclip_shift"] for r in wanted["results"]]
        served = client.post("/v1/search", json={"input": TEXTS[4], "k": 4, "max_score": "threshold"}).json()
        assert [r["id"] for r in served["results"]] == [r["id"] for r in filtered["results"]]
        assert all(r["unsafe_score"] < 0.25 for r in served["results"])
        bad = client.post("/v1/search", json={"input": TEXTS[0], "mode": "sideways"})
        assert bad.status_code == 400 and "unknown search mode" in bad.json()["error"]["message"]


def test_the_command_serves_on_loopback_until_stopped(tiny_model_dir):
    port = free_port()
    environment = {**os.environ, "SAFECLIP_API_KEYS": "sk-cli-key"}
    server = subprocess.Popen([sys.executable, "-m", "safeclip_sdk", "serve", str(tiny_model_dir), "--port", str(port),
                               "--backend", "torch", "--device", "cpu", "--model-name", MODEL],
                              env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, 60)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"model": MODEL, "input": "a cat"},
                            headers={"Authorization": "Bearer sk-cli-key"})
        assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 64
        assert httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"model": MODEL, "input": "a cat"}
                          ).status_code == 401
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}" in output and "sk-cli-key" not in output


def test_a_store_without_a_collection_is_a_usage_error(tmp_path, tiny_model_dir):
    result = CliRunner().invoke(cli, ["serve", str(tiny_model_dir), "--qdrant", str(tmp_path / "db")])
    assert result.exit_code == 2 and "--collection" in result.output


def test_concurrent_moderations_share_model_calls_and_equal_the_library(hysac_world):
    encoder = Encoder.load(hysac_world["folder"], backend="torch", device="cpu")
    texts = (hysac_world["safe_texts"][:8] + hysac_world["unsafe_texts"][:8])
    expected = moderate(encoder, texts=texts)
    app = create_app(encoder, settings=ServeSettings(model_name=MODEL, max_wait_ms=50), api_keys=())
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        with ThreadPoolExecutor(len(texts)) as pool:
            answers = list(pool.map(lambda text: client.post("/v1/moderations", json={"input": text}).json(), texts))
        metrics = client.get("/metrics").text
    for answer, wanted in zip(answers, expected):
        result = answer["results"][0]
        assert result["flagged"] == wanted.flagged
        assert result["category_scores"]["unsafe"] == pytest.approx(wanted.category_scores["unsafe"], abs=1e-5)
    calls = _sample(metrics, 'safeclip_batch_size_count{modality="moderation-text"}')
    assert _sample(metrics, 'safeclip_batch_size_sum{modality="moderation-text"}') == len(texts)
    assert calls < len(texts), f"{len(texts)} concurrent moderations took {calls} model calls"


def test_searches_waiting_are_bounded_and_every_answer_is_right(tmp_path, tiny_model_dir):
    encoder = Encoder.load(tiny_model_dir, backend="torch", device="cpu")
    store = open_store(tmp_path / "db")
    _side_by_side(store, "photos", encoder.space.to_stored(encoder.encode_text(TEXTS)), tiny_model_dir, encoder)
    store.close()
    slow = Encoder.load(tiny_model_dir, backend="torch", device="cpu")
    encode_text = slow.encode_text

    def slowly(texts, **options):
        time.sleep(0.3)
        return encode_text(texts, **options)

    slow.encode_text = slowly
    app = create_app(slow, store=str(tmp_path / "db"), collection="photos",
                     settings=ServeSettings(max_queue=2, retry_after_s=2), api_keys=())
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        expected = [r["id"] for r in client.post("/v1/search", json={"input": TEXTS[2], "k": 3}).json()["results"]]
        with ThreadPoolExecutor(10) as pool:
            responses = list(pool.map(lambda _: client.post("/v1/search", json={"input": TEXTS[2], "k": 3}),
                                      range(10)))
        metrics = client.get("/metrics").text
    statuses = [response.status_code for response in responses]
    assert set(statuses) == {200, 429}, statuses
    for response in responses:
        if response.status_code == 200:
            assert [r["id"] for r in response.json()["results"]] == expected
        else:
            assert response.headers["retry-after"] == "2"
    assert _sample(metrics, 'safeclip_rejected_total{modality="search"}') == statuses.count(429)


def test_base_mode_searches_the_original_vectors_with_the_recorded_base(tmp_path, tiny_model_dir, untrained_model_dir):
    base = Encoder.load(tiny_model_dir, backend="torch", device="cpu")
    original = base.space.to_stored(base.encode_text(TEXTS))
    store = open_store(tmp_path / "db")
    _side_by_side(store, "photos", original, untrained_model_dir, base)
    store.close()
    query = base.space.to_stored(base.encode_text([TEXTS[3]]))[0]
    cosine = original @ query / (np.linalg.norm(original, axis=1) * np.linalg.norm(query))
    expected = [int(i) for i in np.argsort(-cosine)[:4]]

    app = create_app(untrained_model_dir, store=str(tmp_path / "db"), collection="photos", backend="torch",
                     device="cpu", settings=ServeSettings(), api_keys=())
    with running(app) as url, httpx.Client(base_url=url) as client:
        served = client.post("/v1/search", json={"input": TEXTS[3], "k": 4, "mode": "base"}).json()
        assert served["mode"] == "base" and served["vector"] == "image"
        assert [r["id"] for r in served["results"]] == expected
        safe = client.post("/v1/search", json={"input": TEXTS[3], "k": 4, "mode": "query-side"}).json()
        assert [r["id"] for r in safe["results"]] != expected  # the safe model's query is another vector
        deployments = client.get("/page/deployments").json()
        assert deployments["deployments"][0]["search"] == {"mode": "base"} and deployments["compare"] == "base"

    without_base = create_app(Encoder.load(untrained_model_dir, backend="torch", device="cpu"),
                              store=str(tmp_path / "db"), collection="photos", settings=ServeSettings(), api_keys=())
    with running(without_base) as url:
        answer = httpx.post(f"{url}/v1/search", json={"input": TEXTS[3], "mode": "base"})
        assert answer.status_code == 400 and "--base-model" in answer.json()["error"]["message"]
        assert "base" not in [d["id"] for d in httpx.get(f"{url}/page/deployments").json()["deployments"]]
