"""Payload sources: texts, image paths confined to the image root, and size/time-limited URLs
(served by a local http.server on 127.0.0.1; no outside network)."""

from __future__ import annotations

import io
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.index.reindex.sources import IMAGE, TEXT, SourceReader, describe_source, lookup


def _png(color=(200, 30, 30), size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def root(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "cat.png").write_bytes(_png())
    (folder / "notes.png").write_text("this is not an image")
    (tmp_path / "secret.png").write_bytes(_png((0, 0, 0)))
    return folder


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.routes[self.path](self)

    def log_message(self, *args):  # keep test output quiet
        pass


def _send(handler, body: bytes, status=200, length=True):
    handler.send_response(status)
    if length:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _drip(handler):
    handler.send_response(200)
    handler.end_headers()
    for _ in range(40):
        handler.wfile.write(b"x" * 10)
        handler.wfile.flush()
        time.sleep(0.05)


def _redirect(handler):
    handler.send_response(302)
    handler.send_header("Location", "ftp://127.0.0.1/cat.png")
    handler.end_headers()


@pytest.fixture(scope="module")
def server():
    png = _png()
    _Handler.routes = {
        "/cat.png": lambda h: _send(h, png),
        "/big": lambda h: _send(h, b"x" * 5000),
        "/big-unannounced": lambda h: _send(h, b"x" * 5000, length=False),
        "/slow": _drip,
        "/page.html": lambda h: _send(h, b"<html>not an image</html>"),
        "/missing": lambda h: _send(h, b"no", status=404),
        "/redirect": _redirect,
    }
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


# --- fields ---

def test_text_field_and_reasons():
    reader = SourceReader(text_field="caption")
    assert reader.read({"caption": "a dog on a beach"}, TEXT) == ("a dog on a beach", None)
    assert reader.read({}, TEXT) == (None, "payload field 'caption' is missing")
    assert reader.read({"caption": None}, TEXT) == (None, "payload field 'caption' is missing")
    assert reader.read({"caption": 3}, TEXT) == (None, "payload field 'caption' is a number, not a string")
    assert reader.read({"caption": ["a"]}, TEXT) == (None, "payload field 'caption' is a list, not a string")
    assert reader.read({"caption": "  "}, TEXT) == (None, "payload field 'caption' is empty")
    assert reader.kinds == (TEXT,)


def test_dotted_fields_reach_into_nested_payloads():
    payload = {"meta": {"path": "a.png", "n": {"deep": "x"}}, "flat.key": "literal"}
    assert lookup(payload, "meta.path") == "a.png"
    assert lookup(payload, "meta.n.deep") == "x"
    assert lookup(payload, "flat.key") == "literal"
    reader = SourceReader(text_field="meta.n.deep")
    assert reader.read(payload, TEXT) == ("x", None)
    assert SourceReader(text_field="meta.nope").read(payload, TEXT) == (None, "payload field 'meta.nope' is missing")
    assert describe_source(reader, payload, TEXT) == "x"
    assert describe_source(reader, {}, TEXT) == "(missing)"


def test_a_reader_needs_a_field_and_a_real_root(tmp_path):
    with pytest.raises(SafeclipError, match="name a payload field"):
        SourceReader()
    with pytest.raises(SafeclipError, match="needs an image root"):
        SourceReader(image_field="path")
    with pytest.raises(SafeclipError, match="is not a folder"):
        SourceReader(image_field="path", image_root=str(tmp_path / "absent"))


def test_round_trip_through_a_dict(root):
    reader = SourceReader(image_field="path", text_field="caption", image_root=str(root), allow_urls=True,
                          max_url_bytes=10, url_timeout=2.0)
    assert SourceReader.from_dict(reader.to_dict()) == reader
    assert reader.kinds == (IMAGE, TEXT)


# --- local images ---

def test_image_paths_inside_the_root(root):
    reader = SourceReader(image_field="path", image_root=str(root))
    content, reason = reader.read({"path": "sub/cat.png"}, IMAGE)
    assert reason is None and content == str((root / "sub" / "cat.png").resolve())
    assert reader.read({"path": "sub/../sub/cat.png"}, IMAGE)[1] is None
    assert reader.read({"path": str(root / "sub" / "cat.png")}, IMAGE)[1] is None  # absolute, but inside
    image, reason = reader.load({"path": "sub/cat.png"}, IMAGE)
    assert reason is None and image.size == (8, 6) and image.mode == "RGB"


@pytest.mark.parametrize("value", ["../secret.png", "sub/../../secret.png", "/etc/passwd", "link/secret.png",
                                   "escape.png"])
def test_paths_that_leave_the_root_are_refused(root, value):
    os.symlink(root.parent, root / "link")  # a folder symlink pointing out of the root
    os.symlink(root.parent / "secret.png", root / "escape.png")  # a file symlink pointing out
    reader = SourceReader(image_field="path", image_root=str(root))
    assert reader.read({"path": value}, IMAGE) == (None, f"path '{value}' is outside the image root")
    assert reader.load({"path": value}, IMAGE)[0] is None


def test_a_symlink_that_stays_inside_is_fine(root):
    os.symlink(root / "sub" / "cat.png", root / "alias.png")
    reader = SourceReader(image_field="path", image_root=str(root))
    assert reader.read({"path": "alias.png"}, IMAGE) == (str((root / "sub" / "cat.png").resolve()), None)


def test_missing_files_folders_and_non_images(root):
    reader = SourceReader(image_field="path", image_root=str(root))
    assert reader.read({"path": "sub/dog.png"}, IMAGE) == (None, "file 'sub/dog.png' not found under the image root")
    assert reader.read({"path": "sub"}, IMAGE) == (None, "'sub' is not a file")
    assert reader.read({"path": "bad\0name.png"}, IMAGE)[1].startswith("path 'bad")
    assert reader.read({"path": 12}, IMAGE) == (None, "payload field 'path' is a number, not a string")
    # a file that is there but is not an image: found by read, refused by load
    assert reader.read({"path": "notes.png"}, IMAGE)[1] is None
    image, reason = reader.load({"path": "notes.png"}, IMAGE)
    assert image is None and reason.endswith("notes.png: not an image or an unsupported format")


def test_urls_need_allow_urls(root, server):
    reader = SourceReader(image_field="path", image_root=str(root))
    url = f"{server}/cat.png"
    assert reader.read({"path": url}, IMAGE) == (None, f"URL '{url}' not allowed (URLs are fetched only with allow_urls)")
    assert reader.read({"path": "file:///etc/passwd"}, IMAGE) == (
        None, "URL 'file:///etc/passwd' has an unsupported scheme (only http and https)")


# --- URLs ---

def test_url_images_are_fetched(server):
    reader = SourceReader(image_field="url", allow_urls=True)
    content, reason = reader.read({"url": f"{server}/cat.png"}, IMAGE)
    assert reason is None and content == _png()
    image, reason = reader.load({"url": f"{server}/cat.png"}, IMAGE)
    assert reason is None and image.size == (8, 6)
    assert reader.read({"url": "photos/cat.png"}, IMAGE) == (
        None, "'photos/cat.png' is a local path, but no image root was given")


@pytest.mark.parametrize("route", ["/big", "/big-unannounced"])
def test_url_too_large(server, route):
    reader = SourceReader(image_field="url", allow_urls=True, max_url_bytes=1000)
    assert reader.read({"url": server + route}, IMAGE) == (None, f"URL '{server}{route}' is larger than 1000 bytes")


def test_url_that_takes_too_long(server):
    reader = SourceReader(image_field="url", allow_urls=True, url_timeout=0.5)
    started = time.monotonic()
    content, reason = reader.read({"url": f"{server}/slow"}, IMAGE)
    assert content is None and reason == f"URL '{server}/slow' timed out after 0.5 s"
    assert time.monotonic() - started < 1.5


def test_url_errors(server):
    reader = SourceReader(image_field="url", allow_urls=True)
    assert reader.read({"url": f"{server}/missing"}, IMAGE) == (None, f"URL '{server}/missing' failed: HTTP 404 Not Found")
    reason = reader.read({"url": f"{server}/redirect"}, IMAGE)[1]
    assert reason.startswith(f"URL '{server}/redirect' failed: redirect to a non-HTTP URL refused")
    reason = reader.read({"url": "http://127.0.0.1:9/x.png"}, IMAGE)[1]
    assert reason.startswith("URL 'http://127.0.0.1:9/x.png' failed:") and "refused" in reason
    image, reason = reader.load({"url": f"{server}/page.html"}, IMAGE)
    assert image is None and reason == f"{server}/page.html: not an image or an unsupported format"
