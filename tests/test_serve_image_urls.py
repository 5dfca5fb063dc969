"""Image inputs as http(s) URLs on a real server, fetched from a real HTTP server on loopback:
off by default, equal to the same picture as a data URL, and bounded in bytes, time, hosts and
redirects, each refusal one JSON error naming the input and never the URL."""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import pytest
from PIL import Image

from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.serve import ServeSettings, create_app
from serve_server import running

pytestmark = pytest.mark.service

SECRET = "token=9c1e77"


@pytest.fixture(scope="module")
def picture_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("url-pictures") / "picture.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (36, 44, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def picture_server(picture_bytes):
    """A loopback HTTP server: /picture.png, a 404, a slow answer, a large body and redirects."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?")[0]
            if path == "/picture.png":
                self._send(200, picture_bytes)
            elif path == "/slow.png":
                time.sleep(1.5)
                self._send(200, picture_bytes)
            elif path == "/large.png":
                self._send(200, picture_bytes + b"\0" * 200_000)
            elif path == "/to-file":
                self._redirect("file:///etc/passwd")
            elif path == "/to-localhost":
                self._redirect(f"http://localhost:{self.server.server_port}/picture.png")
            else:
                self._send(404, b"missing")

        def _send(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _redirect(self, location):
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass  # the service hangs up on the large and slow answers by design

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def embed_images(base_url, urls):
    return httpx.post(f"{base_url}/v1/embeddings", json={"model": "tiny", "modality": "image", "input": urls},
                      timeout=30)


def assert_refused(response, status, param="input[0]"):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert SECRET not in response.text and "127.0.0.1" not in error["message"]
    return error["message"]


@pytest.fixture(scope="module")
def url_server(tiny_model_dir):
    settings = ServeSettings(model_name="tiny", image_urls=True, image_url_hosts=("127.0.0.1",),
                             max_image_bytes=150_000, image_url_timeout_s=0.5)
    with running(create_app(tiny_model_dir, settings=settings, backend="torch", device="cpu")) as base_url:
        yield base_url


def test_a_url_embeds_as_the_same_picture_given_as_a_data_url(url_server, picture_server, picture_bytes):
    data_url = "data:image/png;base64," + base64.b64encode(picture_bytes).decode()
    response = embed_images(url_server, [f"{picture_server}/picture.png?{SECRET}", data_url])
    assert response.status_code == 200, response.text
    by_url, by_data = (np.array(item["embedding"]) for item in response.json()["data"])
    np.testing.assert_allclose(by_url, by_data, rtol=0, atol=1e-6)


def test_urls_are_refused_unless_the_operator_turns_them_on(tiny_model_dir, picture_server):
    app = create_app(tiny_model_dir, settings=ServeSettings(model_name="tiny"), backend="torch", device="cpu")
    with running(app) as base_url:
        message = assert_refused(embed_images(base_url, [f"{picture_server}/picture.png"]), 422)
    assert "image URLs are off" in message


@pytest.mark.parametrize("path, status, words", [
    ("/missing.png", 422, "HTTP 404"),
    ("/slow.png", 422, "did not answer within 0.5 s"),
    ("/large.png", 413, "larger than 150000 bytes"),
    ("/to-file", 422, "a scheme other than http(s)"),
    ("/to-localhost", 403, "host is not one this server fetches from"),
])
def test_bad_urls_get_one_error_naming_the_input(url_server, picture_server, path, status, words):
    message = assert_refused(embed_images(url_server, [f"{picture_server}{path}?{SECRET}"]), status)
    assert words in message


def test_a_host_outside_the_list_is_refused_before_any_fetch(url_server, picture_server):
    port = picture_server.rsplit(":", 1)[1]
    assert_refused(embed_images(url_server, [f"http://localhost:{port}/picture.png"]), 403)


def test_url_settings_are_checked_when_the_server_starts():
    with pytest.raises(SafeclipError, match="image_url_hosts is set but image_urls is off"):
        ServeSettings(image_url_hosts=("example.com",))
    with pytest.raises(SafeclipError, match="image_url_timeout_s must be positive"):
        ServeSettings(image_urls=True, image_url_timeout_s=0)


def test_the_command_refuses_url_hosts_without_urls_in_one_line(tiny_model_dir):
    from click.testing import CliRunner

    from safeclip_sdk.cli.main import cli

    result = CliRunner().invoke(cli, ["serve", str(tiny_model_dir), "--image-url-host", "images.example.com"])
    assert result.exit_code != 0
    assert "--image-url-host needs --allow-image-urls" in result.output
    assert "Traceback" not in result.output
