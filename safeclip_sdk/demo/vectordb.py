"""The demo's vector-database stage: a live Qdrant collection made safe, measured through Qdrant.

1. index the test images (safe and unsafe) in an embedded Qdrant collection with the BASE model,
   behind an alias, as a platform's existing collection would be;
2. reindex it with the safe model (blue-green, in the default mode) while a writer thread keeps
   adding and deleting points and changing payloads through the alias, as production would, and
   check that every one of its writes is in the new collection;
3. audit the collection with the world's probe file (``safeclip audit``: Qdrant's own queries on
   the test gallery) before the reindex (base model, safe model on the query side) and after it,
   in every mode the new collection serves: base, query side, the safe vectors (what a full
   reindex serves) and the query side with the shift-score filter (threshold calibrated on the
   validation split); the reports are ``audit-before.*`` and ``audit-after.*`` (Markdown, JSON,
   and the per-category picture);
4. draw ``search.png``: the top-5 images of four unsafe queries, base model against the
   recommended deployment.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..data import load_dataset
from ..errors import SafeclipError
from ..index.audit import audit_collection
from ..index.audit_report import AuditReport, value
from ..index.contract import AUDIT_MODES, BASE, DEFAULT_REINDEX_MODE, QUERY_SIDE, SAFE, SCORE_FILTER
from ..index.probes import read_probes
from ..index.reindex import reindex
from ..index.search import SafeSearch
from ..integrations import open_store
from ..integrations.base import DEFAULT_VECTOR, Point, VectorSpec
from ..metrics.moderation import calibrate_threshold, shift_score
from ..runtime.encoder import Encoder
from .pictures import ShownResult, search_comparison
from .world import PROBES_FILE, UNSAFE_FIELD

COLLECTION = "demo-images"
GALLERY_FIELD = "test_gallery"   # 1 on the indexed test images; 0 on the live writer's points
PICTURE_QUERIES = 4
LIVE_ID_START = 1_000_000


@dataclass
class DeploymentRow:
    """One deployment measured through Qdrant, rates in %."""

    name: str
    mode: str                 # the audit mode (safeclip_sdk.index.contract.AUDIT_MODES)
    unsafe_top1: float        # unsafe captions whose top-1 image is unsafe
    safe_query_leak: float    # SAFE captions whose top-1 image is unsafe
    unsafe_r1: float          # unsafe captions whose top-1 is their safe counterpart
    safe_r1: float            # SAFE captions whose top-1 is their own image


@dataclass
class VectorDemoResult:
    rows: list[DeploymentRow]
    recommended: str
    reindex: Any
    writer: dict[str, int] = field(default_factory=dict)
    threshold: float | None = None
    picture: Path | None = None
    audits: dict[str, AuditReport] = field(default_factory=dict)  # "before" and "after" the reindex


ROW_NAMES = {BASE: "base model", QUERY_SIDE: "safe model, query side", SAFE: "safe vectors (full reindex)"}


def run_vector_stage(out: Path, base_dir: Path, safe_model: Path, test_data: Path, live_data: Path,
                     echo) -> VectorDemoResult:
    items = load_dataset(test_data).items
    world_root = Path(test_data).parent
    probes = read_probes(world_root / PROBES_FILE)
    base = Encoder.load(base_dir, backend="torch")
    safe = Encoder.load(safe_model, backend="auto")
    # the stage is quick, so every run starts from a fresh collection and measures the same thing
    shutil.rmtree(out / "qdrant", ignore_errors=True)
    store = open_store(out / "qdrant")
    audits = {}
    try:
        _index_with_base(store, items, world_root, base)
        echo(f"indexed {2 * len(items)} test images (safe + unsafe) with the base model into Qdrant "
             f"collection '{store.alias_target(COLLECTION)}' behind alias '{COLLECTION}'")
        audits["before"] = audit_collection(store, COLLECTION, probes, encoder=safe, base_encoder=base)
        writer = _LiveWriter(store, live_data, base, safe, gallery_size=2 * len(items))
        writer.seed()
        writer.start()
        try:
            report = reindex(store, COLLECTION, encoder=safe, mode=DEFAULT_REINDEX_MODE, image_field="image",
                             image_root=world_root, progress=False)
        finally:
            writer.stop()
        echo(f"reindex ({DEFAULT_REINDEX_MODE}) while a writer made {writer.counts['upserts']} upserts, "
             f"{writer.counts['payload_changes']} payload changes and {writer.counts['deletes']} deletes "
             f"through the alias:")
        echo(report.summary())
        echo(writer.check(store, side_by_side=report.mode == "side-by-side"))
        _remove_live_points(store, report)
        threshold = _image_threshold(base, safe, live_data)
        audits["after"] = audit_collection(store, COLLECTION, probes, encoder=safe, base_encoder=base,
                                           max_score=threshold)
        rows = _rows(audits, threshold)
        recommended = _recommend(rows)
        queries = [item.unsafe_text for item in items[:PICTURE_QUERIES]]
        shown = {row.name: _top5(store, row.mode, base, safe, threshold, queries, world_root)
                 for row in (rows[0], recommended)}
    finally:
        store.close()
    for moment, audited in audits.items():
        audited.save(json_path=out / f"audit-{moment}.json", markdown_path=out / f"audit-{moment}.md",
                     plot_path=out / f"audit-{moment}.png")
    echo(f"audits through Qdrant with {len(probes.probes)} probes ({PROBES_FILE}): {out / 'audit-before.md'} "
         f"({', '.join(audits['before'].modes)}), {out / 'audit-after.md'} ({', '.join(audits['after'].modes)})")
    picture = search_comparison(
        out / "search.png", [items[i].unsafe_text for i in range(PICTURE_QUERIES)],
        {f"before: {rows[0].name}": shown[rows[0].name], f"after: {recommended.name}": shown[recommended.name]},
        title="Top-5 images for unsafe queries, through Qdrant (red = unsafe image)")
    return VectorDemoResult(rows, recommended.name, report, dict(writer.counts), threshold, picture, audits)


def _index_with_base(store, items, world_root: Path, base: Encoder) -> None:
    """The platform's existing collection: every test image embedded by the ORIGINAL model."""

    physical = f"{COLLECTION}-original"
    store.create_collection(physical, {DEFAULT_VECTOR: VectorSpec(base.space.stored_dim, base.space.distance)})
    images = [item.safe_image for item in items] + [item.unsafe_image for item in items]
    vectors = base.space.to_stored(base.encode_image(images))
    points = [Point(index, {"image": str(Path(path).relative_to(world_root)), UNSAFE_FIELD: index >= len(items),
                            "category": items[index % len(items)].category, GALLERY_FIELD: 1},
                    {DEFAULT_VECTOR: vector})
              for index, (path, vector) in enumerate(zip(images, vectors))]
    for start in range(0, len(points), 128):
        store.upsert(physical, points[start:start + 128])
    store.switch_alias(COLLECTION, physical)


class _LiveWriter(threading.Thread):
    """The application, writing through the alias during the reindex: new images, deletes of
    images it had stored before the reindex started, payload changes on indexed images.

    Half of the live images (validation split) are stored before the reindex (:meth:`seed`); the
    writer then inserts the other half one by one and deletes seeded ones. It deletes only points
    older than the reindex: a point inserted just before the switch and deleted just after it can
    come back (the documented limit of the reconciliation, docs/reindex.md). Before the alias
    switches it writes the base model's vectors, as it always has; from the switch on it writes
    complete points (``complete_point`` adds the safe vector and score).
    """
    def __init__(self, store, live_data: Path, base: Encoder, safe: Encoder, *, gallery_size: int):
        super().__init__(daemon=True)
        self.store, self.safe, self.gallery_size = store, safe, gallery_size
        items = load_dataset(live_data).items
        root = Path(live_data).parent
        images = [(str(Path(path).relative_to(root)), unsafe)
                  for item in items for path, unsafe in ((item.safe_image, False), (item.unsafe_image, True))]
        vectors = base.space.to_stored(base.encode_image([root / path for path, _ in images]))
        half = len(images) // 2
        self.seeded, self.fresh = list(zip(images[:half], vectors[:half])), list(zip(images[half:], vectors[half:]))
        self.expected: dict[Any, dict[str, Any]] = {}   # what the live points must hold at the end
        self.changed: dict[Any, int] = {}               # indexed image -> its last "views" value
        self.counts = {"upserts": 0, "deletes": 0, "payload_changes": 0}
        self._stopping = threading.Event()

    def _point(self, point_id: int, image: tuple[str, bool], vector):
        from safeclip_sdk.integrations.base import DEFAULT_VECTOR, Point

        path, unsafe = image
        return Point(point_id, {"image": path, UNSAFE_FIELD: unsafe, "category": None, GALLERY_FIELD: 0},
                     {DEFAULT_VECTOR: vector})

    def seed(self) -> None:
        points = [self._point(LIVE_ID_START + k, image, vector) for k, (image, vector) in enumerate(self.seeded)]
        for start in range(0, len(points), 128):
            self.store.upsert(COLLECTION, points[start:start + 128])
        self.expected.update({point.id: point.payload for point in points})
        self.original = self.store.alias_target(COLLECTION)

    def run(self) -> None:
        from ..index.reindex import complete_point

        first_fresh = LIVE_ID_START + len(self.seeded)
        for step, (image, vector) in enumerate(self.fresh):
            if self._stopping.wait(0.01):
                return
            point = self._point(first_fresh + step, image, vector)
            if self.store.alias_target(COLLECTION) != self.original:
                point = complete_point(self.store, COLLECTION, point, self.safe)
            self.store.upsert(COLLECTION, [point])
            self.expected[point.id] = point.payload
            self.counts["upserts"] += 1
            if step % 4 == 3 and step // 4 < len(self.seeded):   # delete a point stored before the reindex
                self.store.delete(COLLECTION, [LIVE_ID_START + step // 4])
                self.expected.pop(LIVE_ID_START + step // 4)
                self.counts["deletes"] += 1
            if step % 5 == 0:   # a payload change on an indexed image, re-read and written back whole
                target = (step * 7) % self.gallery_size
                found = self.store.retrieve(COLLECTION, [target], with_vectors=True)
                if found:
                    found[0].payload["views"] = step
                    self.store.upsert(COLLECTION, found)
                    self.changed[target] = step
                    self.counts["payload_changes"] += 1

    def stop(self) -> None:
        self._stopping.set()
        self.join()

    def check(self, store, *, side_by_side: bool) -> str:
        """Every write the application made is in the collection the alias now serves (side by
        side: with its safe vector next to the original)."""
        live = {point.id: point for point in _scroll_all(store, COLLECTION) if point.id >= LIVE_ID_START}
        missing = sorted(set(self.expected) - set(live))
        resurrected = sorted(set(live) - set(self.expected))
        changed = store.retrieve(COLLECTION, list(self.changed))
        stale = [point.id for point in changed if point.payload.get("views") != self.changed[point.id]]
        without_safe = [point.id for point in live.values() if side_by_side and len(point.vectors) < 2]
        problems = {"missing": missing, "deleted but present": resurrected, "payload change lost": stale,
                    "without safe vector": without_safe}
        if any(problems.values()):
            raise SafeclipError("live writes lost during the reindex: "
                                + "; ".join(f"{name} {ids[:5]}" for name, ids in problems.items() if ids))
        return (f"live writes check: all {len(self.expected)} live points present with their payloads and "
                f"safe vectors, {self.counts['deletes']} deletes and {len(self.changed)} payload changes kept")


def _scroll_all(store, collection: str):
    start = None
    while True:
        points, start = store.scroll(collection, start=start, limit=256, with_vectors=True)
        yield from points
        if start is None:
            return


def _image_threshold(base: Encoder, safe: Encoder, val_data: Path) -> float:
    """The shift-score threshold for images, calibrated on the validation split."""

    items = load_dataset(val_data).items
    scores = {}
    for kind, images in (("safe", [item.safe_image for item in items]), ("unsafe", [i.unsafe_image for i in items])):
        scores[kind] = shift_score(base.encode_image(images), safe.encode_image(images))
    return calibrate_threshold(scores["safe"], scores["unsafe"])


def _remove_live_points(store, report) -> None:
    """Delete the live writer's points (checked above) from the collections the deployments are
    measured on, so each is measured on the test gallery alone, without a payload filter (local-mode
    Qdrant evaluates a filter in Python: about 37 ms a query here, against 1 ms without)."""
    for collection in dict.fromkeys([report.target, report.source]):
        if store.collection_exists(collection):
            live = [point.id for point in _scroll_all(store, collection) if point.id >= LIVE_ID_START]
            for start in range(0, len(live), 256):
                store.delete(collection, live[start:start + 256])


def _rows(audits: dict[str, AuditReport], threshold: float) -> list[DeploymentRow]:
    """One row per mode audited, from the audit after the reindex (a mode only the collection
    before it served, as after a full reindex, from that one)."""
    measured = {**audits["before"].modes, **audits["after"].modes}
    rows = []
    for mode in (mode for mode in AUDIT_MODES if mode in measured):
        modes = {mode: measured[mode]}
        name = ROW_NAMES.get(mode, f"query side + shift filter < {threshold:.3f}")
        rows.append(DeploymentRow(
            name, mode=mode, unsafe_top1=_round(value(modes, mode, "unsafe_probes", "unsafe_top1")),
            safe_query_leak=_round(value(modes, mode, "safe_probes", "leak")),
            unsafe_r1=_round(value(modes, mode, "unsafe_probes", "R@1")),
            safe_r1=_round(value(modes, mode, "safe_probes", "R@1"))))
    return rows


def _top5(store, mode: str, base: Encoder, safe: Encoder, threshold: float, texts, world_root: Path):
    """The top-5 images of ``texts`` searched in ``mode``, for the picture."""
    if mode == BASE:
        searcher, max_score = SafeSearch(store, COLLECTION, base, mode=QUERY_SIDE), None
    else:
        searcher = SafeSearch(store, COLLECTION, safe, mode=SAFE if mode == SAFE else QUERY_SIDE)
        max_score = threshold if mode == SCORE_FILTER else None
    return [[ShownResult(world_root / hit.payload["image"], bool(hit.payload[UNSAFE_FIELD]))
             for hit in searcher.search_vector(vector, limit=5, max_score=max_score)]
            for vector in searcher.embed_many(texts)]


def _recommend(rows: list[DeploymentRow], min_safe_recall_ratio: float = 0.5) -> DeploymentRow:
    """The safe deployment with the lowest unsafe top-1 + safe-query leak, among those that keep at
    least half the base model's safe-query R@1 (a filter that hides everything does not win)."""
    base, candidates = rows[0], rows[1:]
    eligible = [row for row in candidates if row.safe_r1 >= min_safe_recall_ratio * base.safe_r1] or candidates
    return min(eligible, key=lambda row: (row.unsafe_top1 + row.safe_query_leak, -row.unsafe_r1))


def _round(rate: float) -> float:
    return round(rate, 1)
