"""Screenshot of `safeclip serve`'s search page on the demo's world, in headless Chromium.

Serves the demo's safe model over a copy of its live Qdrant collection (`safeclip serve ...
--image-root WORLD` in a new process, on a free loopback port), opens `/?q=QUERY` in headless
Chromium and saves what it renders. The demo's own output is never written to.

    python scripts/search_page_screenshot.py --demo-output demo-output --out docs/search-page.png
    python scripts/search_page_screenshot.py --out /tmp/page.png   # runs `safeclip demo --quick` first

The query defaults to the first test scene's unsafe caption (the first row of the demo's
search.png); the flag threshold to the shift-score threshold the demo's audit used, when its
audit-after.json has one.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from PIL import Image

COLLECTION = "demo-images"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-output", type=Path, help="a `safeclip demo` output folder (default: run "
                                                         "`safeclip demo --quick` into a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("docs/search-page.png"))
    parser.add_argument("--query", help="default: the first test scene's unsafe caption")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--window", default="1400,720", help="width,height of the browser window")
    args = parser.parse_args()
    browser = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if browser is None:
        sys.exit("no Chromium found (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="safeclip-page-") as scratch:
        scratch = Path(scratch)
        demo = args.demo_output
        if demo is None:
            demo = scratch / "demo"
            subprocess.run([sys.executable, "-m", "safeclip_sdk", "demo", "--quick", "--no-export", "--device", "cpu",
                            "--output-dir", str(demo)], check=True)
        store = scratch / "qdrant"
        shutil.copytree(demo / "qdrant", store)
        model = demo / "onnx" if (demo / "onnx" / "manifest.json").is_file() else demo / "safe-clip" / "model"
        query = args.query or json.loads((demo / "world" / "test.jsonl").read_text().splitlines()[0])["unsafe_text"]
        page = {"q": query, "k": str(args.k), "left": "base"}
        threshold = _audited_threshold(demo / "audit-after.json")
        if threshold is not None:  # the collection records none for the shift score: compare with its filter
            page.update(threshold=f"{threshold:.4g}", right="score-filter")
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "safeclip_sdk", "serve", str(model), "--qdrant", str(store),
                                   "--collection", COLLECTION, "--image-root", str(demo / "world"),
                                   "--port", str(port)])
        try:
            _wait_ready(f"http://127.0.0.1:{port}/readyz", server)
            raw = scratch / "page.png"
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--user-data-dir={scratch / 'profile'}",
                            f"--screenshot={raw}", f"--window-size={args.window}", "--virtual-time-budget=15000",
                            f"http://127.0.0.1:{port}/?{urllib.parse.urlencode(page)}"],
                           check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            server.terminate()
            server.wait(30)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(_small_png(raw))
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB, query {query!r}")


def _audited_threshold(audit: Path) -> float | None:
    if not audit.is_file():
        return None
    mode = json.loads(audit.read_text()).get("modes", {}).get("score-filter")
    return mode.get("max_score") if mode else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit("the server did not become ready")
        time.sleep(0.3)


def _small_png(path: Path) -> bytes:
    """The screenshot with a 256-colour palette, to keep the committed picture small."""
    out = io.BytesIO()
    Image.open(path).convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


if __name__ == "__main__":
    main()
