"""`safeclip serve` scaled out: two autoscaled Ray Serve replicas on a local Ray (two CPUs) answering as the
in-process Encoder and search do, through httpx and the openai client, over a PostgreSQL
collection every replica opens; a GPU request on this GPU-less host failing at once; the
options that do not go together; and two uvicorn worker processes (`--workers 2`) that both answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from safeclip_sdk.cli.main import cli
from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.index.search import search
from safeclip_sdk.integrations import open_store
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.serve import ServeSettings
from serve_server import free_port, wait_ready
from test_search import TEXTS, _side_by_side
from tests.ray_world import local_ray  # noqa: F401 - the session's Ray

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")

pytestmark = pytest.mark.service

MODEL = "tiny"


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def photos_dsn(pg_server, encoder, tiny_model_dir):
    """A PostgreSQL database holding the search tests' side-by-side collection behind alias ``photos``."""
    database = pg_server.create_database()
    store = open_store(pg_server.dsn(database))
    _side_by_side(store, "photos", encoder.space.to_stored(encoder.encode_text(TEXTS)), tiny_model_dir, encoder,
                  threshold=0.25)
    store.close()
    yield pg_server.dsn(database)
    pg_server.drop_database(database)


@pytest.fixture(scope="module")
def ray_url(local_ray, photos_dsn, tiny_model_dir):
    """The tiny model on the session's Ray, autoscaled between two and three replicas (it starts
    with two), shared by this module's Ray tests."""
    from ray import serve

    from safeclip_sdk.serve.ray_serve import deploy_ray

    url = deploy_ray(tiny_model_dir, store=photos_dsn, collection="photos", settings=ServeSettings(model_name=MODEL),
                     min_replicas=2, max_replicas=3, cpus_per_replica=0.5, port=free_port(), backend="torch",
                     device="cpu")
    yield url
    serve.shutdown()


def test_a_replica_that_cannot_load_its_model_fails_in_one_line(local_ray, tmp_path):
    """Runs before the shared deployment exists: both would take the route prefix /."""
    from ray import serve

    from safeclip_sdk.serve.ray_serve import deploy_ray

    with pytest.raises(SafeclipError, match=r"^a Ray Serve replica could not start: .*missing-model") as failure:
        deploy_ray(tmp_path / "missing-model", cpus_per_replica=0.5, port=free_port(), backend="torch")
    assert "\n" not in str(failure.value)
    assert "safeclip" not in serve.status().applications  # the failed application was removed
    serve.shutdown()  # the shared deployment starts Serve with its own port


def test_the_command_starts_ray_answers_with_keys_and_stops_cleanly_on_sigterm(tiny_model_dir):
    """`safeclip serve --ray` in a new process: its own local Ray (apart from the session's), the
    keys reach the replica, and SIGTERM removes the application, stops Serve and Ray, exits 0."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "safeclip_sdk", "serve", str(tiny_model_dir), "--ray",
                               "--cpus-per-replica", "0.5", "--port", str(port), "--backend", "torch",
                               "--device", "cpu", "--model-name", MODEL],
                              env={**os.environ, "SAFECLIP_API_KEYS": "sk-ray-key"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(url, server, 240)
        body = {"model": MODEL, "input": "a cat"}
        answer = httpx.post(f"{url}/v1/embeddings", json=body, headers={"Authorization": "Bearer sk-ray-key"})
        assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 64
        assert httpx.post(f"{url}/v1/embeddings", json=body).status_code == 401
        time.sleep(1)  # the command logs its address once deploy_ray has returned
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=120)
    assert server.returncode == 0, output
    assert f"serving on Ray Serve at {url}" in output and "sk-ray-key" not in output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_two_replicas_embed_as_the_encoder_through_httpx_and_openai(ray_url, encoder):
    from ray import serve

    replicas = serve.status().applications["safeclip"].deployments["safeclip"].replica_states
    assert replicas == {"RUNNING": 2}
    assert ray_url.startswith("http://127.0.0.1:")
    expected = encoder.encode_text(TEXTS)
    served = httpx.post(f"{ray_url}/v1/embeddings", json={"model": MODEL, "input": TEXTS}).json()
    assert cosines(np.array([item["embedding"] for item in served["data"]]), expected).min() > 0.9999
    client = openai.OpenAI(base_url=f"{ray_url}/v1", api_key="unused", max_retries=0)
    with ThreadPoolExecutor(8) as pool:  # concurrent requests, spread over both replicas
        answers = list(pool.map(lambda text: client.embeddings.create(model=MODEL, input=text), TEXTS * 3))
    vectors = np.array([answer.data[0].embedding for answer in answers])
    assert cosines(vectors, np.concatenate([expected] * 3)).min() > 0.9999
    bad = httpx.post(f"{ray_url}/v1/embeddings", json={"model": MODEL, "input": []})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "input"


def test_search_equals_the_in_process_search(ray_url, photos_dsn, encoder):
    for mode in ("safe", "query-side"):
        wanted = search(photos_dsn, "photos", TEXTS[1], encoder=encoder, limit=4, mode=mode)
        served = httpx.post(f"{ray_url}/v1/search", json={"input": TEXTS[1], "k": 4, "mode": mode}).json()
        assert (served["mode"], served["collection"]) == (wanted.mode, wanted.collection)
        assert [r["id"] for r in served["results"]] == [r.id for r in wanted]
        assert [r["score"] for r in served["results"]] == pytest.approx([r.score for r in wanted], abs=1e-5)
    filtered = httpx.post(f"{ray_url}/v1/search", json={"input": TEXTS[4], "k": 4, "max_score": "threshold"}).json()
    assert filtered["results"] and all(r["unsafe_score"] < 0.25 for r in filtered["results"])


def test_health_readiness_and_metrics_answer(ray_url):
    assert httpx.get(f"{ray_url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{ray_url}/readyz").json()
    assert (ready["status"], ready["model"], ready["collection"]) == ("ready", MODEL, "photos")
    httpx.post(f"{ray_url}/v1/embeddings", json={"model": MODEL, "input": "a cat"}).raise_for_status()
    metrics = httpx.get(f"{ray_url}/metrics")
    assert metrics.status_code == 200 and "safeclip_requests_total" in metrics.text


def test_a_gpu_request_on_a_host_without_one_fails_at_once(local_ray, tiny_model_dir):
    from safeclip_sdk.serve.ray_serve import deploy_ray

    assert ray.cluster_resources().get("GPU", 0) == 0  # this test is about a host without GPUs
    started = time.monotonic()
    with pytest.raises(SafeclipError, match=r"2 replica\(s\) with 1 GPU\(s\) each need 2 GPU\(s\), but .* has 0: "
                                                 r"lower --replicas or --gpus-per-replica"):
        deploy_ray(tiny_model_dir, replicas=2, gpus_per_replica=1, port=free_port())
    assert time.monotonic() - started < 10
    result = CliRunner().invoke(cli, ["serve", str(tiny_model_dir), "--ray", "--max-replicas", "4",
                                      "--min-replicas", "3", "--gpus-per-replica", "0.5", "--port", str(free_port())])
    message = result.output.strip()
    assert result.exit_code == 1 and "\n" not in message and "need 1.5 GPU(s)" in message, result.output
    assert "--gpus-per-replica 0" in message and "--workers" not in message
    assert "Traceback" not in message


@pytest.mark.parametrize("arguments, complaint", [
    (["--ray", "--workers", "2"], "--workers"),
    (["--replicas", "2"], "--replicas needs --ray"),
    (["--gpus-per-replica", "1"], "--gpus-per-replica needs --ray"),
    (["--ray", "--replicas", "2", "--max-replicas", "3"], "not both"),
    (["--ray", "--min-replicas", "2"], "--min-replicas needs --max-replicas"),
    (["--ray", "--target-ongoing-requests", "4"], "--target-ongoing-requests needs --max-replicas"),
])
def test_options_that_do_not_go_together_are_a_usage_error(tiny_model_dir, arguments, complaint):
    result = CliRunner().invoke(cli, ["serve", str(tiny_model_dir), *arguments])
    assert result.exit_code == 2 and complaint in result.output, result.output


def test_a_local_qdrant_folder_is_refused_for_several_processes(tmp_path, tiny_model_dir):
    for arguments in (["--workers", "2"], ["--ray", "--replicas", "2"], ["--ray", "--max-replicas", "2"]):
        result = CliRunner().invoke(cli, ["serve", str(tiny_model_dir), "--qdrant", str(tmp_path / "db"),
                                          "--collection", "photos", *arguments])
        assert result.exit_code == 1 and "can be opened by one process only" in result.output, result.output
        assert "\n" not in result.output.strip()


def test_two_uvicorn_workers_both_answer(tiny_model_dir, encoder, photos_dsn):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "safeclip_sdk", "serve", str(tiny_model_dir), "--workers", "2",
                               "--port", str(port), "--backend", "torch", "--device", "cpu", "--model-name", MODEL,
                               "--pgvector", photos_dsn, "--collection", "photos"],
                              env={**os.environ, "SAFECLIP_API_KEYS": "sk-workers"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    headers = {"Authorization": "Bearer sk-workers"}
    try:
        wait_ready(url, server, 90)
        texts = [f"a photo number {i} of a small boat" for i in range(48)]

        def embed(text):  # a new connection each time: the kernel hands it to either worker
            response = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": text}, headers=headers)
            return response.json()["data"][0]["embedding"]

        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(8) as pool:
            served = np.array(list(pool.map(embed, texts)))
            assert cosines(served, encoder.encode_text(texts)).min() > 0.9999
            # each worker counts its own requests: two different counts that add up to all of them
            counts: set[float] = set()
            while len(counts) < 2 and time.monotonic() < deadline:
                counts |= set(pool.map(lambda _: _embedding_count(httpx.get(f"{url}/metrics").text), range(16)))
        assert len(counts) == 2 and sum(counts) == len(texts), counts
        found = httpx.post(f"{url}/v1/search", json={"input": TEXTS[1], "k": 1, "mode": "query-side"},
                           headers=headers).json()
        assert found["results"][0]["payload"]["caption"] == TEXTS[1]
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert output.count("Started server process") == 2, output


def _embedding_count(metrics: str) -> float:
    name = 'safeclip_requests_total{route="/v1/embeddings",status="200"} '
    return next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name)), 0.0)
