"""Streaming copy: scroll a range page by page, re-embed in a worker thread, upsert complete points.

The main thread scrolls and upserts; one worker thread reads each page's sources and embeds them
(the image decoding inside ``Encoder`` uses its own thread pool), up to ``prefetch`` pages ahead.
So the database calls and the embedding overlap, and memory holds only a few pages at a time
whatever the collection's size. After each page's upsert the range cursor is written to the job
state: a killed run redoes at most the pages that were in flight.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...integrations.base import Point, PointId, VectorStore
from ...metrics.moderation import shift_score
from .plan import Plan, in_range
from ..contract import ERROR_FIELD, FULL

#: Qdrant servers refuse requests over 32 MiB by default; stay well below
MAX_REQUEST_BYTES = 8 * 2**20
PREFETCH = 2


@dataclass
class Built:
    """A page of points in the target's layout, and what happened to each source."""

    points: list[Point]
    failures: list[tuple[Point, str]] = field(default_factory=list)  # source points that failed, with reason
    embedded: int = 0
    kept: int = 0
    skipped: int = 0


class PointBuilder:
    """Turns source points into complete target points (upsert replaces a whole point, so every
    vector and the payload are always written together)."""

    def __init__(self, plan: Plan, encoder, reader):
        self.plan = plan
        self.encoder = encoder
        self.reader = reader  # safeclip_sdk.index.reindex.sources.SourceReader

    def build(self, points: Sequence[Point]) -> Built:
        plan = self.plan
        embeddings: dict[str, dict[int, np.ndarray]] = {}
        category_rows: dict[str, dict[int, np.ndarray]] = {}
        reasons: dict[int, list[str]] = {}
        for name, kind in plan.kinds.items():
            embeddings[name], failed = self._embed(points, kind)
            category_rows[name] = self._category_scores(embeddings[name], kind)
            for position, reason in failed.items():
                reasons.setdefault(position, []).append(reason)
        built = Built([])
        added = plan.added_vectors()
        for position, point in enumerate(points):
            if position in reasons and plan.on_error == "skip":
                built.failures.append((point, "; ".join(reasons[position])))
                built.skipped += 1
                continue
            vectors = {name: vector for name, vector in point.vectors.items() if name not in added}
            payload = {key: value for key, value in point.payload.items() if key not in plan.reserved_fields()}
            scores = []
            for name in plan.kinds:
                embedding = embeddings[name].get(position)
                if embedding is None:
                    continue
                safe_name = plan.safe_names[name]
                space = self.encoder.space
                vectors[safe_name] = space.to_stored(embedding[None, :])[0]
                original = point.vectors.get(name)
                if space.has_unsafe_score:
                    scores.append(float(space.unsafe_score(embedding[None, :])[0]))
                elif plan.mode != FULL and original is not None and original.shape == embedding.shape:
                    scores.append(float(shift_score(original[None, :], embedding[None, :])[0]))
            if position in reasons:
                payload[ERROR_FIELD] = "; ".join(reasons[position])
                built.failures.append((point, payload[ERROR_FIELD]))
                built.kept += 1
            else:
                built.embedded += 1
            if plan.score_field and scores:
                payload[plan.score_field] = max(scores)  # several vectors: the one moved most
            rows = [category_rows[name][position] for name in plan.kinds if position in category_rows[name]]
            if plan.category_field and rows:
                payload[plan.category_field] = self._category_payload(np.max(rows, axis=0))
            built.points.append(Point(point.id, payload, vectors))
        return built

    def _category_scores(self, embedded: dict[int, np.ndarray], kind: str) -> dict[int, np.ndarray]:
        """Each embedded position's class probabilities, when the plan writes per-category scores."""
        if not self.plan.category_field or not embedded:
            return {}
        positions = list(embedded)
        probabilities = self.encoder.category_classifier.probabilities(np.stack([embedded[p] for p in positions]),
                                                                      kind)
        return dict(zip(positions, probabilities))

    def _category_payload(self, probabilities: np.ndarray) -> dict[str, float]:
        """``{category key: probability}`` (several vectors: each category's highest)."""
        classes = self.encoder.category_classifier.classes
        return {self.plan.category_keys[category]: float(probabilities[column])
                for column, category in enumerate(classes) if category in self.plan.category_keys}

    def _embed(self, points: Sequence[Point], kind: str) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """Embeddings by position in ``points``, and the reason for each source that failed."""
        contents, failed = [], {}
        positions = []
        for position, point in enumerate(points):
            content, reason = self.reader.read(point.payload, kind)
            if reason is not None:
                failed[position] = reason
            else:
                contents.append(content)
                positions.append(position)
        if not contents:
            return {}, failed
        if kind == "text":
            vectors = self.encoder.encode_text(contents)
            return dict(zip(positions, vectors)), failed
        result = self.encoder.encode_image_batch(contents)
        for failure in result.failures:
            failed[positions[failure.index]] = failure.reason
        return {positions[index]: vector for index, vector in zip(result.indices, result.embeddings)}, failed


def request_chunks(points: Sequence[Point], max_bytes: int = MAX_REQUEST_BYTES) -> list[list[Point]]:
    """``points`` split so that each upsert request stays under ``max_bytes`` (JSON estimate)."""
    chunks: list[list[Point]] = [[]]
    size = 0
    for point in points:
        # a float32 written as JSON takes about 12 characters
        point_bytes = 12 * sum(v.size for v in point.vectors.values()) + len(json.dumps(point.payload, default=str))
        if chunks[-1] and size + point_bytes > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(point)
        size += point_bytes
    return [chunk for chunk in chunks if chunk]


def write_points(store: VectorStore, collection: str, points: Sequence[Point]) -> None:
    for chunk in request_chunks(points):
        store.upsert(collection, chunk)


def copy_range(store: VectorStore, plan: Plan, span: dict[str, Any], builder: PointBuilder,
               commit: Callable[[Built, PointId | None, bool], None], *, prefetch: int = PREFETCH) -> None:
    """Copy the points of ``span`` (a range with ``start``, ``end`` and ``cursor``) from its cursor on.

    ``commit(built, next_cursor, finished)`` runs after each page is in the target, in id order.
    """
    pending: deque = deque()

    def finish_oldest():
        future, next_cursor, finished = pending.popleft()
        built = future.result()
        write_points(store, plan.target, built.points)
        commit(built, next_cursor, finished)

    with ThreadPoolExecutor(1, thread_name_prefix="safeclip-embed") as pool:
        cursor = span["cursor"]
        finished = False
        while not finished:
            points, next_start = store.scroll(plan.source, start=cursor, limit=plan.batch_size, with_vectors=True)
            inside = [point for point in points if in_range(point.id, span["end"])]
            finished = next_start is None or len(inside) < len(points) or not in_range(next_start, span["end"])
            pending.append((pool.submit(builder.build, inside), None if finished else next_start, finished))
            if len(pending) > prefetch:
                finish_oldest()
            cursor = next_start
        while pending:
            finish_oldest()
