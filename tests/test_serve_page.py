"""The search page of `safeclip serve` on a real uvicorn server: the page and its routes over HTTP,
thumbnails confined to the image root, the keys, and the page rendered by headless Chromium
(skipped when no Chromium is installed)."""

from __future__ import annotations

import io
import shutil
import subprocess
import urllib.parse
from html.parser import HTMLParser

import httpx
import numpy as np
import pytest
from PIL import Image

from safeclip_sdk.integrations import open_store
from safeclip_sdk.integrations.base import Point, VectorSpec
from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.serve import ServeSettings, create_app
from serve_server import running

pytestmark = pytest.mark.service

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium; "
                                                          "scripts/setup-env.sh installs it when run as root)")
COLLECTION = "photos"
THRESHOLD = 0.25
CATEGORY_THRESHOLD = 0.5
HOSTILE = "<img src=x onerror=\"document.title='pwned'\"> & <b>bold</b>"
COLORS = [(220, 20, 20), (20, 200, 40), (30, 40, 230), (240, 240, 30), (200, 30, 200), (30, 200, 200)]


@pytest.fixture(scope="module")
def encoder(tiny_model_dir):
    return Encoder.load(tiny_model_dir, backend="torch", device="cpu")


@pytest.fixture(scope="module")
def world(tmp_path_factory, encoder, tiny_model_dir):
    """An image root with six pictures and a side-by-side collection of them (plus one text-only
    item with a hostile caption), shift scores 0.0-0.6 and one category score per item; beside the
    root, a picture and a secret file the thumbnails must never serve."""
    base = tmp_path_factory.mktemp("page")
    root = base / "images"
    (root / "pics").mkdir(parents=True)
    paths = []
    for i, color in enumerate(COLORS):
        pixels = np.full((300, 200, 3), color, dtype=np.uint8)
        pixels[i * 40:(i + 1) * 40] = 255 - np.array(color, dtype=np.uint8)
        paths.append(root / "pics" / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(base / "outside.png")
    (base / "secret.txt").write_text("not for the page")
    (root / "notes.txt").write_text("not an image")
    (root / "escape.png").symlink_to(base / "outside.png")
    vectors = encoder.space.to_stored(encoder.encode_image(paths))
    vectors = np.vstack([vectors, encoder.space.to_stored(encoder.encode_text([HOSTILE]))])
    safe = np.roll(vectors, 1, axis=0)
    store = open_store(base / "db")
    physical = f"{COLLECTION}-safeclip-v1"
    dim = vectors.shape[1]
    store.create_collection(physical, {"image": VectorSpec(dim, "cosine"), "image_safe": VectorSpec(dim, "cosine")})
    payloads = [{"image": f"pics/{i}.png", "label": f"picture {i}"} for i in range(len(paths))] + [{"caption": HOSTILE}]
    store.upsert(physical, [Point(i, {**payload, "safeclip_shift": i / 10,
                                      "safeclip_categories": {"violence": 0.9 if i % 3 == 0 else 0.1}},
                                  {"image": vectors[i], "image_safe": safe[i]})
                            for i, payload in enumerate(payloads)])
    store.switch_alias(COLLECTION, physical)
    store.write_state(f"index:{physical}", {
        "mode": "side-by-side", "model": str(tiny_model_dir), "space": encoder.space.to_dict(),
        "vectors": {"image": "image_safe"}, "score_field": "safeclip_shift", "threshold": THRESHOLD,
        "category_field": "safeclip_categories", "category_keys": {"violence": "violence"},
        "category_thresholds": {"violence": CATEGORY_THRESHOLD}})
    store.close()
    return {"base": base, "root": root, "db": str(base / "db")}


def app_for(encoder, world, api_keys=(), image_root=True, collection=COLLECTION):
    return create_app(encoder, store=world["db"], collection=collection, api_keys=api_keys,
                      settings=ServeSettings(image_root=world["root"] if image_root else None))


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]["message"]


def test_the_page_and_its_deployments(encoder, world):
    with running(app_for(encoder, world)) as url, httpx.Client(base_url=url) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/static/page.js"' in page.text and "https://" not in page.text
        script = client.get("/static/page.js")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
        assert "innerHTML" not in script.text and "://" not in script.text
        assert client.get("/static/page.css").status_code == 200
        assert_error(client.get("/static/..%2Fpage.py"), 404)
        assert_error(client.get("/static/app.py"), 404)
        config = client.get("/page/deployments").json()
    assert [d["id"] for d in config["deployments"]] == ["query-side", "safe", "score-filter"]
    assert config["deployments"][2]["search"] == {"mode": "query-side", "max_score": "threshold"}
    assert (config["recommended"], config["compare"]) == ("score-filter", "query-side")
    assert config["unsafe_threshold"] == THRESHOLD
    assert config["category_thresholds"] == {"violence": {"category": "violence", "threshold": CATEGORY_THRESHOLD}}


def test_a_plain_collection_offers_the_query_side_only(encoder, world, tmp_path):
    store = open_store(tmp_path / "db")
    store.create_collection("plain", {"image": VectorSpec(encoder.space.stored_dim, "cosine")})
    store.upsert("plain", [Point(0, {"caption": "a cat"}, {"image": encoder.space.to_stored(
        encoder.encode_text(["a cat"]))[0]})])
    store.close()
    app = create_app(encoder, store=str(tmp_path / "db"), collection="plain", api_keys=())
    with running(app) as url:
        config = httpx.get(f"{url}/page/deployments").json()
    assert [d["id"] for d in config["deployments"]] == ["query-side"]
    assert (config["recommended"], config["compare"], config["unsafe_threshold"]) == ("query-side", "query-side", None)


def test_a_model_that_transforms_queries_also_offers_the_query_as_typed(hysac_world, tmp_path):
    encoder = Encoder.load(hysac_world["folder"], backend="torch", device="cpu")
    pictures = hysac_world["safe_images"] + hysac_world["unsafe_images"]
    store = open_store(tmp_path / "db")
    store.create_collection("hyperbolic", {"image": VectorSpec(encoder.space.stored_dim, encoder.space.distance)})
    vectors = encoder.space.to_stored(encoder.encode_image(pictures))
    store.upsert("hyperbolic", [Point(i, {"image": path.name}, {"image": vector})
                                for i, (path, vector) in enumerate(zip(pictures, vectors))])
    store.close()
    app = create_app(encoder, store=str(tmp_path / "db"), collection="hyperbolic", api_keys=(),
                     settings=ServeSettings(image_root=pictures[0].parent))
    with running(app) as url:
        config = httpx.get(f"{url}/page/deployments").json()
        assert [d["id"] for d in config["deployments"]] == ["query-as-typed", "query-side"]
        assert (config["compare"], config["recommended"]) == ("query-as-typed", "query-side")
        query = hysac_world["unsafe_texts"][0]
        for deployment in config["deployments"]:
            answer = httpx.post(f"{url}/v1/search", json={**deployment["search"], "input": query, "k": 3})
            assert answer.status_code == 200 and len(answer.json()["results"]) == 3
        assert httpx.get(f"{url}/page/thumbnail", params={"path": pictures[0].name}).status_code == 200
        metrics = httpx.get(f"{url}/metrics").text
    assert 'safeclip_search_queries_total{transformed="false"} 1.0' in metrics
    assert 'safeclip_search_queries_total{transformed="true"} 1.0' in metrics


def test_without_a_collection_the_page_says_so(encoder):
    with running(create_app(encoder, api_keys=())) as url:
        assert httpx.get(f"{url}/").status_code == 200
        assert "no collection" in assert_error(httpx.get(f"{url}/page/deployments"), 404)


def test_thumbnails_come_only_from_under_the_image_root(encoder, world):
    outside = world["base"] / "outside.png"
    with running(app_for(encoder, world)) as url, httpx.Client(base_url=url) as client:
        def thumbnail(path):
            return client.get("/page/thumbnail", params={"path": path})

        served = thumbnail("pics/2.png")
        assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(served.content)) as image:
            assert image.size == (171, 256)  # 200x300, the longer side brought to 256
        assert thumbnail(str(world["root"] / "pics" / "1.png")).status_code == 200  # absolute, inside
        for escape in ("../outside.png", "../secret.txt", "pics/../../outside.png", str(outside), "/etc/passwd",
                       "escape.png"):
            assert "outside the server's image root" in assert_error(thumbnail(escape), 403), escape
        assert_error(thumbnail("pics/9.png"), 404)
        assert_error(thumbnail("pics"), 404)
        assert_error(thumbnail("pics/1.png\x00.txt"), 404)
        assert_error(thumbnail("notes.txt"), 422)
        assert_error(client.get("/page/thumbnail"), 422)
    with running(app_for(encoder, world, image_root=False)) as url:
        assert "no image root" in assert_error(httpx.get(f"{url}/page/thumbnail", params={"path": "pics/1.png"}), 404)


def test_keys_guard_the_data_but_not_the_page(encoder, world):
    key = "sk-page-key"
    with running(app_for(encoder, world, api_keys=(key,))) as url, httpx.Client(base_url=url) as client:
        assert client.get("/").status_code == 200 and client.get("/static/page.js").status_code == 200
        for route in ("/page/deployments", "/page/thumbnail?path=pics/0.png", "/page/thumbnail?path=../outside.png"):
            assert_error(client.get(route), 401)
            assert_error(client.get(route, headers={"Authorization": "Bearer wrong"}), 401)
        authorized = {"Authorization": f"Bearer {key}"}
        assert client.get("/page/deployments", headers=authorized).status_code == 200
        assert client.get("/page/thumbnail?path=pics/0.png", headers=authorized).status_code == 200
        assert_error(client.get("/page/thumbnail?path=../outside.png", headers=authorized), 403)


class Elements(HTMLParser):
    """Every element of a rendered DOM: its tag, attributes, text, and the ids of its ancestors."""

    def __init__(self):
        super().__init__()
        self.elements: list[dict] = []
        self._open: list[dict] = []

    def handle_starttag(self, tag, attrs):
        within = [e["id"] for e in self._open if "id" in e]
        element = {"tag": tag, **{name: value or "" for name, value in attrs}, "text": "", "within": within}
        self.elements.append(element)
        if tag not in ("img", "input", "meta", "link", "br", "option"):
            self._open.append(element)

    def handle_endtag(self, tag):
        if self._open and self._open[-1]["tag"] == tag:
            self._open.pop()

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def first(self, **wanted) -> dict:
        return next(e for e in self.elements if all(e.get(k) == v for k, v in wanted.items()))


def rendered(url: str, tmp_path) -> Elements:
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                           "--virtual-time-budget=10000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120, check=True)
    parser = Elements()
    parser.feed(done.stdout)
    return parser


def tiles(dom: Elements, side: str) -> list[dict]:
    return [e for e in dom.elements if e["tag"] == "li" and "tile" in e["class"].split() and side in e["within"]]


@needs_browser
def test_headless_chromium_renders_both_deployments_as_the_api_answers(encoder, world, tmp_path):
    query = HOSTILE  # its own text-only item comes first query-side; the page must show it as text
    with running(app_for(encoder, world)) as url:
        config = httpx.get(f"{url}/page/deployments").json()
        bodies = {d["id"]: d["search"] for d in config["deployments"]}
        expected = {side: httpx.post(f"{url}/v1/search", json={**bodies[name], "input": query, "k": 4}).json()
                    for side, name in (("left", config["compare"]), ("right", config["recommended"]))}
        dom = rendered(f"{url}/?{urllib.parse.urlencode({'q': query, 'k': 4})}", tmp_path / "profile")
    assert dom.first(tag="body")["data-state"] == "done"
    assert dom.first(tag="title")["text"] == "safeclip search"  # the caption's onerror never ran
    assert dom.first(id="collection")["text"] == COLLECTION
    for side, name in (("left", "query-side"), ("right", "score-filter")):
        assert dom.first(id=side)["data-deployment"] == name
        shown, answer = tiles(dom, side), expected[side]["results"]
        assert [tile["data-id"] for tile in shown] == [str(result["id"]) for result in answer] and shown
        for rank, (tile, result) in enumerate(zip(shown, answer), start=1):
            assert float(tile["data-unsafe-score"]) == pytest.approx(result["unsafe_score"])
            violent = result["category_scores"]["violence"] >= CATEGORY_THRESHOLD
            unsafe = result["unsafe_score"] >= THRESHOLD or violent
            assert ("unsafe" in tile["class"].split()) == unsafe
            assert f"{rank}. {'UNSAFE' if unsafe else 'safe'}" in tile["text"]
            assert ("(violence)" in tile["text"]) == violent
    assert expected["left"]["results"][0]["payload"]["caption"] == HOSTILE
    assert all(result["unsafe_score"] < THRESHOLD for result in expected["right"]["results"])
    images = [e for e in dom.elements if e["tag"] == "img"]
    with_images = [r for side in expected.values() for r in side["results"] if "image" in r["payload"]]
    assert len(images) == len(with_images) and all(image["src"].startswith("blob:") for image in images)
    captions = [e["text"] for e in dom.elements if e.get("class") == "caption"]
    assert captions == [HOSTILE]  # as text, never parsed as HTML


@needs_browser
def test_headless_chromium_asks_for_a_key_when_the_server_wants_one(encoder, world, tmp_path):
    with running(app_for(encoder, world, api_keys=("sk-page-key",))) as url:
        dom = rendered(f"{url}/?q=a+cat", tmp_path / "profile")
    assert dom.first(tag="body")["data-state"] == "error"
    assert "hidden" not in dom.first(id="key-form")
    assert "API key" in dom.first(id="status")["text"]
    assert not [e for e in dom.elements if e["tag"] == "li"]
