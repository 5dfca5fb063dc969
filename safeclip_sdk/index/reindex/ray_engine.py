"""The reindex copy phase on Ray: pages of each id range through an actor pool of Encoders.

Everything after the copy (``finish_load``, reconciliation, verification, the alias switch and the
pass after it) is :class:`~safeclip_sdk.index.reindex.engine.Job`'s, unchanged. Two ways to write:

- **driver writes** (a local Qdrant folder, or an open store: one client only). The driver scrolls
  the pages and streams each point's content (a text, an image path under the image root, or
  downloaded bytes) through ONE actor pool that lives for the whole copy, a few pages in flight per
  actor; it gets the embeddings back in page order, builds the complete points and upserts them,
  committing the range's cursor after each page. Ray Data is not used here: it cannot read from
  this process, and its read tasks would wait for the CPUs the actors hold.
- **workers write** (a Qdrant server URL or PostgreSQL). The driver cuts every unfinished range
  into pages with one id-only scroll; each actor opens its own store, reads its page, embeds it and
  upserts it, and returns what it did. A range's cursor moves past the pages finished in a row.

Either way the job state in the database holds one cursor per range, so a killed run redoes only
the pages after each range's cursor.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import numpy as np

from ...runtime import ray_pool as dray
from ...integrations import open_store
from ...integrations.base import Point, PointId
from .engine import Job
from .pipeline import Built, PointBuilder, write_points
from .plan import Plan, in_range
from ..contract import ERROR_FIELD
from .sources import SourceReader


def workers_write(target) -> bool:
    """Whether actors can open ``target`` themselves: a server, not a local folder or an open store."""
    return isinstance(target, str) and target.startswith(("http://", "https://", "postgresql://", "postgres://"))


class RayJob(Job):
    """A :class:`Job` whose copy phase runs on a Ray actor pool; every other phase is the local one."""

    def __init__(self, store, job, builder: PointBuilder, *, model: str, target, workers: int = 1,
                 gpus_per_worker: float = 0, cpus_per_worker: float = 1, address: str | None = None, **options):
        super().__init__(store, job, builder, **options)
        self.model, self.target = str(model), target
        self.workers, self.gpus_per_worker, self.cpus_per_worker = workers, gpus_per_worker, cpus_per_worker
        self.address = address

    def _copy(self) -> None:
        if all(span["done"] for span in self.job["ranges"]):
            return
        dray.connect(self.address, self.workers, self.gpus_per_worker, progress=False,
                     cpus_per_worker=self.cpus_per_worker)
        counters = self.job["counters"]
        total = self.store.count(self.plan.source)
        with self._bar("copy", total, initial=min(total, counters["copied"] + counters["skipped"])) as bar:
            try:
                if workers_write(self.target):
                    self._copy_in_workers(bar)
                else:
                    self._copy_through_driver(bar)
            except Exception as error:
                raise dray.unwrap(error) from error

    def _commit(self, built: Built, span: dict[str, Any], cursor: PointId | None, finished: bool, bar) -> None:
        self._absorb(built)
        self.job["counters"]["copied"] += len(built.points)
        span["cursor"], span["done"] = cursor, finished
        self.save()
        bar.update(len(built.points) + built.skipped)

    # --- driver writes ---

    def _copy_through_driver(self, bar) -> None:
        embedded = dray.streamed(EmbedActor, (self.model,), self._pages_to_embed(), workers=self.workers,
                                 gpus_per_worker=self.gpus_per_worker, cpus_per_worker=self.cpus_per_worker)
        with closing(embedded):  # a failed write stops the actors at once
            for ((span, points, cursor, finished), rows), result in embedded:
                builder = _Precomputed(self.plan, self.builder.encoder, self.builder.reader, rows, result)
                built = builder.build(points)
                write_points(self.store, self.plan.target, built.points)
                self._commit(built, span, cursor, finished, bar)

    def _pages(self) -> Iterator[tuple[dict[str, Any], list[Point], PointId | None, bool]]:
        """Every unfinished range's pages from its cursor on, as ``copy_range`` reads them."""
        plan = self.plan
        for span in self.job["ranges"]:
            cursor, finished = span["cursor"], span["done"]
            while not finished:
                points, next_start = self.store.scroll(plan.source, start=cursor, limit=plan.batch_size,
                                                       with_vectors=True)
                inside = [point for point in points if in_range(point.id, span["end"])]
                finished = next_start is None or len(inside) < len(points) or not in_range(next_start, span["end"])
                yield span, inside, None if finished else next_start, finished
                cursor = next_start

    def _pages_to_embed(self):
        """Each page with its rows, and what of them an actor needs."""
        for page in self._pages():
            rows = self._rows(page[1])
            yield (page, rows), {key: rows[key] for key in ("kind", "text", "data")}

    def _rows(self, points: list[Point]) -> dict[str, list]:
        """What an actor embeds for one page: each point's text, image path or image bytes, by kind,
        and (read here, where the payloads are) the sources that could not be read."""
        reader: SourceReader = self.builder.reader
        rows: dict[str, list] = {"kind": [], "position": [], "text": [], "data": [], "unreadable": []}
        for kind in sorted(set(self.plan.kinds.values())):
            for position, point in enumerate(points):
                content, reason = reader.read(point.payload, kind)
                if reason is not None:
                    rows["unreadable"].append((kind, position, reason))
                    continue
                rows["kind"].append(kind)
                rows["position"].append(position)
                rows["text"].append(content if isinstance(content, str) else "")
                rows["data"].append(content if isinstance(content, bytes) else b"")
        return rows

    # --- workers write ---

    def _copy_in_workers(self, bar) -> None:
        plan = self.plan
        pages: dict[int, list[PointId | None]] = {}
        rows = []
        for index, span in enumerate(self.job["ranges"]):
            if span["done"]:
                continue
            starts = self._page_starts(span)
            pages[index] = starts
            for number, start in enumerate(starts):
                end = starts[number + 1] if number + 1 < len(starts) else span["end"]
                rows.append({"range": index, "page": number, "start": json.dumps(start), "end": json.dumps(end)})
        finished: dict[int, set[int]] = {index: set() for index in pages}
        options = dray.pool_options(self.workers, self.gpus_per_worker, 1, self.cpus_per_worker)
        dataset = dray.ray.data.from_items(rows).map_batches(
            WriteActor, fn_constructor_args=(self.model, self.target, plan.to_dict()), **options)
        for batch in dataset.iter_batches(batch_format="numpy", batch_size=1):
            index, number = int(batch["range"][0]), int(batch["page"][0])
            built = _built_from_json(json.loads(str(batch["result"][0])))
            finished[index].add(number)
            starts, span = pages[index], self.job["ranges"][index]
            first_open = next((n for n in range(len(starts)) if n not in finished[index]), None)
            self._commit(built, span, starts[first_open] if first_open is not None else None, first_open is None,
                         bar)

    def _page_starts(self, span: dict[str, Any]) -> list[PointId | None]:
        """The first id of each page of ``span`` from its cursor on (one id-only scroll)."""
        starts, cursor = [span["cursor"]], span["cursor"]
        while True:
            points, cursor = self.store.scroll(self.plan.source, start=cursor, limit=self.plan.batch_size,
                                               with_payload=False)
            if cursor is None or not in_range(cursor, span["end"]) or not points:
                return starts
            starts.append(cursor)


class _Precomputed(PointBuilder):
    """A PointBuilder whose embeddings an actor computed for one page (the rows of ``_rows``)."""

    def __init__(self, plan: Plan, encoder, reader, rows: dict[str, list], result: dict[str, Any]):
        super().__init__(plan, encoder, reader)
        self.embeddings: dict[str, dict[int, np.ndarray]] = {}
        self.failed: dict[str, dict[int, str]] = {}
        for kind, position, reason in rows["unreadable"]:
            self.failed.setdefault(kind, {})[position] = reason
        for kind, position, embedding, reason in zip(rows["kind"], rows["position"], result["embedding"],
                                                     result["reason"]):
            if reason:
                self.failed.setdefault(kind, {})[position] = reason
            else:
                self.embeddings.setdefault(kind, {})[position] = embedding

    def _embed(self, points, kind):
        return self.embeddings.get(kind, {}), self.failed.get(kind, {})


def _built_to_json(built: Built) -> dict[str, Any]:
    """What the driver needs of a page an actor wrote: ids, which were flagged, the failed sources."""
    return {"points": [[point.id, ERROR_FIELD in point.payload] for point in built.points],
            "failures": [[point.id, point.payload, reason] for point, reason in built.failures],
            "embedded": built.embedded, "kept": built.kept, "skipped": built.skipped}


def _built_from_json(values: dict[str, Any]) -> Built:
    points = [Point(point_id, {ERROR_FIELD: True} if flagged else {}, {}) for point_id, flagged in values["points"]]
    failures = [(Point(point_id, payload, {}), reason) for point_id, payload, reason in values["failures"]]
    return Built(points, failures, values["embedded"], values["kept"], values["skipped"])


# --- the actors (one Encoder each) ---

class EmbedActor(dray.EncoderActor):
    """Embeds the texts, image paths and image bytes of one page's rows."""

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        self.check_loaded()
        count = len(batch["kind"])
        embeddings = np.zeros((count, self.encoder.embed_dim), dtype=np.float32)
        reasons = [""] * count
        texts = [i for i in range(count) if batch["kind"][i] == "text"]
        images = [i for i in range(count) if batch["kind"][i] == "image"]
        if texts:
            embeddings[texts] = self.encoder.encode_text([str(batch["text"][i]) for i in texts])
        if images:
            contents = [bytes(batch["data"][i]) if len(batch["data"][i]) else str(batch["text"][i]) for i in images]
            result = self.encoder.encode_image_batch(contents)
            if len(result.indices):
                embeddings[[images[k] for k in result.indices]] = result.embeddings
            for failure in result.failures:
                reasons[images[failure.index]] = failure.reason
        return {"embedding": embeddings, "reason": reasons}


class WriteActor(dray.EncoderActor):
    """Reads, embeds and writes whole pages with its own store connection and Encoder."""

    def __init__(self, model: str, target: str, plan: dict[str, Any]):
        super().__init__(model)
        self.plan = Plan.from_dict(plan)
        self.store = open_store(target)
        reader = SourceReader(**{key: self.plan.sources[key] for key in
                                 ("image_field", "image_root", "text_field", "allow_urls")})
        self.builder = PointBuilder(self.plan, self.encoder, reader)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_loaded()
        results = []
        for start, end in zip(batch["start"], batch["end"]):
            built = self.builder.build(self._page(json.loads(str(start)), json.loads(str(end))))
            write_points(self.store, self.plan.target, built.points)
            results.append(json.dumps(_built_to_json(built), default=str))
        return {"range": batch["range"], "page": batch["page"], "result": np.array(results, dtype=object)}

    def _page(self, start: PointId | None, end: PointId | None) -> list[Point]:
        """The points in ``[start, end)``, whatever was written since the pages were cut."""
        points, cursor = [], start
        while True:
            found, cursor = self.store.scroll(self.plan.source, start=cursor, limit=self.plan.batch_size,
                                              with_vectors=True)
            inside = [point for point in found if in_range(point.id, end)]
            points += inside
            if cursor is None or len(inside) < len(found) or not in_range(cursor, end):
                return points

