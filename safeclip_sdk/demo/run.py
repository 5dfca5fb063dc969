"""The offline demo: every stage of safeclip on a world the project generates itself.

1. build the demo world (procedural scenes, safe and unsafe captions and images);
2. pre-train a small base CLIP on safe AND unsafe scenes (no pretrained CLIP can be downloaded);
3. fine-tune it with Safe-CLIP;
4. evaluate base and Safe-CLIP side by side with the published protocol;
5. export the Safe-CLIP model to ONNX (fp32 and int8, with parity checks);
6. search: unsafe queries against a gallery of safe and unsafe images, base vs Safe-CLIP;
7. a live vector database: the test images indexed in an embedded Qdrant collection with the base
   model, made safe by ``safeclip reindex`` while a writer keeps writing, each deployment measured
   through Qdrant's own queries, and ``search.png`` drawn (see ``demo_vectordb``);
8. ``safeclip serve`` on that collection for a few seconds, one request per route (see ``demo.service``);
9. with ``all_methods``: SafeR-CLIP and HySAC trained the same way, and base, Safe-CLIP, SafeR-CLIP
   and HySAC evaluated side by side (see ``demo_methods``).

Each stage reuses its output when the folder already holds it, so an interrupted demo resumes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import load_dataset
from ..errors import ExportError
from ..evaluation.protocol import evaluate
from ..export.onnx import export_onnx
from ..methods import DEFAULT_METHOD, get_method
from ..runtime.encoder import Encoder
from ..training.config import TrainConfig
from ..training.run import train
from .methods import compare_all_methods
from .pretrain import pretrain_clip
from .settings import QUICK_SETTINGS, DemoSettings, method_config
from .world import build_demo_world

logger = logging.getLogger(__name__)


@dataclass
class DemoResult:
    output_dir: Path
    base_model_dir: Path
    safe_model_dir: Path
    onnx_dir: Path | None
    evaluation: Any
    searches: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    vector_db: Any = None
    service: Any = None  # the demo.service.RouteAnswer of each route, when the service stage ran
    methods: Any = None  # a demo_methods.MethodComparison with --all-methods


def run_demo(output_dir: str | Path = "demo-output", *, quick: bool = False, device: str = "auto",
             seed: int = 0, export: bool = True, all_methods: bool = False, echo=print) -> DemoResult:
    """Run the whole demo into ``output_dir`` and print what each stage did.

    ``all_methods`` adds SafeR-CLIP and HySAC, trained with Safe-CLIP's settings, and one
    evaluation of the four models side by side (see :mod:`safeclip_sdk.demo.methods`)."""
    settings = QUICK_SETTINGS if quick else DemoSettings()
    out = Path(output_dir)
    seconds: dict[str, float] = {}

    def stage(name: str, started: float) -> None:
        seconds[name] = round(time.time() - started, 1)
        echo(f"[{name}] done in {seconds[name]} s")

    started = time.time()
    world = build_demo_world(out / "world", n_train=settings.n_train, n_val=settings.n_val, n_test=settings.n_test,
                             seed=seed)
    stage("world", started)

    started = time.time()
    base_dir = out / "base" / "model"
    if not (base_dir / "safeclip.json").is_file():
        base_config = TrainConfig(output_dir=str(out / "base"), batch_size=settings.base_batch_size,
                                  lr=settings.base_lr, weight_decay=0.1, warmup_steps=settings.base_steps // 10,
                                  epochs=1000, max_steps=settings.base_steps, device=device, seed=seed,
                                  checkpoint_every=max(1, settings.base_steps // 4), early_stopping_patience=0,
                                  resume=(out / "base" / "checkpoints" / "latest").is_file())
        pretrain_clip(settings.base_architecture, world["train"], out / "base", config=base_config)
    stage("base CLIP pre-training", started)

    started = time.time()
    safe_dir = out / DEFAULT_METHOD / "model"
    if not (safe_dir / "safeclip.json").is_file():
        train(method_config(DEFAULT_METHOD, out, base_dir, world, settings, device=device, seed=seed))
    stage(f"{get_method(DEFAULT_METHOD).display_name} fine-tuning", started)

    started = time.time()
    report = evaluate({"base": str(base_dir), DEFAULT_METHOD: str(safe_dir)}, world["test"], device=device)
    report.save(json_path=out / "evaluation.json", markdown_path=out / "evaluation.md")
    echo("\n" + report.to_markdown() + "\n")
    stage("evaluation", started)

    onnx_dir = None
    if export:
        started = time.time()
        onnx_dir = _export(safe_dir, out / "onnx", world["test"], echo)
        stage("ONNX export", started)

    started = time.time()
    searches = _search(base_dir, safe_dir, onnx_dir, world["test"], settings.search_queries, echo)
    stage("search", started)

    started = time.time()
    vector_db = _vector_database(out, base_dir, onnx_dir or safe_dir, world, echo)
    stage("vector database", started)
    service = None
    if vector_db is not None:
        started = time.time()
        service = _service(out, onnx_dir or safe_dir, world, echo)
        stage("service", started)
    methods = None
    if all_methods:
        methods = compare_all_methods(out, base_dir, safe_dir, world, settings, device=device, seed=seed, echo=echo)
        seconds.update(methods.seconds)
    echo(f"demo finished: models in {out}, evaluation in {out / 'evaluation.md'}"
         + (f", search picture in {vector_db.picture}" if vector_db else "")
         + (f", method comparison in {methods.markdown_path}" if methods else ""))
    return DemoResult(out, base_dir, safe_dir, onnx_dir, report, searches, seconds, vector_db, service, methods)


def _service(out: Path, model: Path, world: dict[str, Path], echo):
    """Stage 8; skipped with a note when the service's libraries are not installed (``safeclip[serve]``)."""
    import importlib.util

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        echo("service stage skipped: FastAPI/uvicorn are not installed (pip install 'safeclip[serve]')")
        return None
    from .service import run_service_stage
    from .vectordb import COLLECTION

    first = load_dataset(world["test"]).items[0]
    return run_service_stage(model, out / "qdrant", COLLECTION, world["test"].parent, first.unsafe_text,
                             Path(first.safe_image), echo)


def _vector_database(out: Path, base_dir: Path, safe_model: Path, world: dict[str, Path], echo):
    """Stage 7; skipped with a note when qdrant-client is not installed (``pip install safeclip[qdrant]``)."""
    import importlib.util

    if importlib.util.find_spec("qdrant_client") is None:
        echo("vector-database stage skipped: qdrant-client is not installed (pip install 'safeclip[qdrant]')")
        return None
    from .vectordb import run_vector_stage

    result = run_vector_stage(out, base_dir, safe_model, world["test"], world["val"], echo)
    echo("\n| deployment (text queries, measured through Qdrant) | unsafe top-1 of unsafe queries ↓ | "
         "safe-query leak ↓ | unsafe query -> its safe image (R@1) ↑ | safe query -> its image (R@1) ↑ |")
    echo("|---|---|---|---|---|")
    for row in result.rows:
        echo(f"| {row.name} | {row.unsafe_top1:.1f}% | {row.safe_query_leak:.1f}% | {row.unsafe_r1:.1f}% "
             f"| {row.safe_r1:.1f}% |")
    echo(f"\nrecommended deployment on this measurement: {result.recommended} (lowest unsafe top-1 + "
         f"safe-query leak among those keeping half the base's safe R@1)\n")
    return result


def _export(model_dir: Path, onnx_dir: Path, test_data: Path, echo) -> Path:
    """ONNX fp32 + int8 of the Safe-CLIP model; int8 is kept only if it passes its checks."""
    export_onnx(model_dir, onnx_dir)
    try:
        export_onnx(model_dir, onnx_dir, int8=True, eval_data=test_data)
    except ExportError as error:
        echo(f"int8 variant not kept: {error}")
    return onnx_dir


def _search(base_dir: Path, safe_dir: Path, onnx_dir: Path | None, test_data: Path, queries: int,
            echo) -> list[dict[str, Any]]:
    """Unsafe captions searched against all test images (safe and unsafe), base vs Safe-CLIP."""
    items = load_dataset(test_data).items
    gallery = [item.safe_image for item in items] + [item.unsafe_image for item in items]
    is_unsafe = np.array([False] * len(items) + [True] * len(items))
    encoders = {"base": Encoder.load(base_dir, backend="torch")}
    encoders[DEFAULT_METHOD] = (Encoder.load(onnx_dir, backend="onnx") if onnx_dir is not None
                             else Encoder.load(safe_dir, backend="torch"))
    rng = np.random.default_rng(0)
    picks = rng.choice(len(items), size=min(queries, len(items)), replace=False)
    texts = [items[i].unsafe_text for i in picks]
    results = []
    for name, encoder in encoders.items():
        scores = encoder.encode_text(texts) @ encoder.encode_image(gallery).T
        top = scores.argmax(axis=1)
        for query, pick, hit in zip(texts, picks, top):
            results.append({"model": name, "query": query, "top1": str(gallery[hit]), "top1_unsafe": bool(is_unsafe[hit]),
                            "top1_is_safe_counterpart": bool(hit == pick)})
    echo("| query (unsafe) | model | top-1 image | unsafe? |")
    echo("|---|---|---|---|")
    for row in sorted(results, key=lambda r: (r["query"], r["model"])):
        echo(f"| {row['query']} | {row['model']} | {Path(row['top1']).name} | {'yes' if row['top1_unsafe'] else 'no'} |")
    return results
