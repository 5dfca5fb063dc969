"""Make a live vector-database collection safe: re-embed it with a safe model, blue-green.

>>> from safeclip_sdk.index.reindex import reindex, rollback, cleanup
>>> report = reindex("./qdrant-db", "photos", "runs/safe-clip", image_field="path",
...                  image_root="/data/photos")                                  # doctest: +SKIP
>>> print(report.summary())                                                      # doctest: +SKIP

``photos`` is the alias readers use. The reindex writes ``photos-safeclip-v<N>``, keeps it in
step with the application's live writes, verifies it, switches the alias in one atomic step and
keeps the old collection for :func:`rollback` until :func:`cleanup` (or ``drop_old=True``).
The whole design is in docs/reindex.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...integrations import open_store
from ...integrations.base import Point, VectorStore
from . import state as st
from .engine import (ABANDONED, MAX_PASSES, VERIFY_SAMPLE, Job, ReindexReport, check_resumable, is_active,
                     next_version, report_of, start_job, write_report)
from .dryrun import dry_run_plan
from .gate import GateFailed, GateLimits, check_old_collection, gate_settings
from .pipeline import PointBuilder
from .sources import SourceReader
from ..contract import DEFAULT_REINDEX_MODE, DEFAULT_SCORE_FIELD, REINDEX_MODES, SIDE_BY_SIDE, UNSAFE_SCORE_FIELD
from .plan import (DEFAULT_BATCH_SIZE, DEFAULT_RANGES, ON_ERROR, Plan, ReindexError, adoption_plan, build_plan,
                   model_probe, parse_vector_options, resolve_source, same_model, versions)

logger = logging.getLogger(__name__)

__all__ = ["reindex", "rollback", "cleanup", "complete_point", "ReindexReport", "ReindexError", "GateFailed",
           "GateLimits", "DEFAULT_BATCH_SIZE"]


def reindex(store: str | os.PathLike | VectorStore, collection: str, model: str | os.PathLike | None = None, *,
            mode: str = DEFAULT_REINDEX_MODE, image_field: str | None = None, image_root: str | os.PathLike | None = None,
            text_field: str | None = None, vectors: Mapping[str, str] | Sequence[str] | None = None,
            on_error: str = "keep", batch_size: int = DEFAULT_BATCH_SIZE, dry_run: bool = False,
            drop_old: bool = False, allow_urls: bool = False, adopt: bool = False,
            score_field: str | None = None, score: bool = True, category_scores: bool = False,
            report: str | os.PathLike | None = None,
            new_version: bool = False, gate: str | os.PathLike | None = None,
            gate_image_root: str | os.PathLike | None = None, base_model: str | os.PathLike | None = None,
            max_unsafe_top1_increase: float = GateLimits.max_unsafe_top1_increase,
            max_leak_increase: float = GateLimits.max_leak_increase,
            max_recall_drop: float = GateLimits.max_recall_drop, resume_switch: bool = False,
            encoder=None, num_ranges: int = DEFAULT_RANGES, max_passes: int = MAX_PASSES,
            verify_samples: int = VERIFY_SAMPLE, progress: bool = True, engine: str = "local", workers: int = 1,
            gpus_per_worker: float = 0, cpus_per_worker: float = 1,
            ray_address: str | None = None) -> ReindexReport:
    """Re-embed the collection behind the alias ``collection`` with a safe model, without downtime.

    Args:
        store: where the collection lives: a Qdrant folder, ``":memory:"``, a Qdrant server URL (API
            key from ``QDRANT_API_KEY``), a ``postgresql://`` DSN, or an open
            :class:`~safeclip_sdk.integrations.VectorStore`.
        collection: the alias readers use. A plain collection of that name needs ``adopt=True``.
        model: a safeclip model folder or ONNX export (loaded with the fastest runtime); or pass ``encoder``.
        mode: ``full`` (safe vectors replace the re-embedded ones under their names) or
            ``side-by-side`` (originals kept, safe vectors added as ``<name>_safe`` / ``safe``, plus the
            shift score in the payload under ``score_field``). A model whose space scores safety
            itself (its method's classifier) stores that score instead, in either mode.
        image_field, image_root: payload field with an image path, resolved under ``image_root``.
        text_field: payload field with a text.
        vectors: which vector each source re-embeds, ``{"image": NAME, "text": NAME}`` or
            ``["image=NAME", ...]``; needed when the collection has several vectors.
        on_error: a point whose source cannot be read keeps its old vectors with the payload flag
            ``safeclip_source_error`` (``keep``) or is left out of the new collection (``skip``).
        batch_size: points per scrolled page and per upsert.
        dry_run: only plan: return (and print from the CLI) what would be done, writing nothing.
        drop_old: drop the old collection once the new one is verified and live.
        allow_urls: let ``image_field`` hold http(s) URLs (downloaded with size and time limits).
        adopt: allow turning a plain collection ``collection`` into an alias (see docs/reindex.md).
        score_field: payload key of the score (default ``safeclip_shift`` for the shift score,
            ``safeclip_unsafe_score`` for a model's own unsafe score).
        score: store the score (False: ``--no-score``).
        category_scores: also store the model's per-category scores (its fitted category classifier's
            probabilities) in each point's payload under ``safeclip_categories``, which ``search(...,
            exclude_categories=[...])`` filters on.
        report: path of a JSON report (counts, passes, verification, every failed source).
        new_version: build a new version even when the alias already serves one made by this model
            with these settings (without it such a rerun reports ``already_done`` and writes nothing).
        gate: a probe file (see ``safeclip_sdk.index.probes``): before the switch, audit the old and
            the new collection and switch only if the new one is no less safe (see ``gate.py``);
            otherwise :class:`GateFailed` is raised, the alias stays and the new collection is kept.
        gate_image_root: the folder the probe file's image probes are relative to.
        base_model: the model the old collection's vectors were embedded with, when the gate audits a
            collection safeclip did not build (default: the base named in the safe model's
            ``safeclip.json``).
        max_unsafe_top1_increase, max_leak_increase, max_recall_drop: the gate's limits, in
            percentage points: how much higher the new unsafe top-1 and leak, and how much lower
            the safe probes' R@1, may be than the old collection's.
        resume_switch: switch a job that a failed gate stopped (after a person looked): its new
            collection is reconciled once more and the alias switched; the gate's decision stays in
            the record, marked as overridden.
        num_ranges: id ranges the job is split into, each with its own cursor.
        max_passes: reconciliation passes before the switch, at most.
        verify_samples: points whose vectors are recomputed and compared before the switch.
        engine: ``local`` (this process) or ``ray``: the copy phase runs on a Ray actor pool of
            ``workers`` actors, each holding one Encoder loaded from ``model`` (with ``gpus_per_worker``
            GPUs and ``cpus_per_worker`` CPUs, i.e. torch threads, each), on the cluster at
            ``ray_address`` (default: ``RAY_ADDRESS`` or a local Ray). Needs the ``[ray]`` extra; see
            docs/reindex.md.
    """
    if mode not in REINDEX_MODES:
        raise ReindexError(f"unknown mode '{mode}' (choose from {', '.join(REINDEX_MODES)})")
    if on_error not in ON_ERROR:
        raise ReindexError(f"unknown --on-error '{on_error}' (choose from {', '.join(ON_ERROR)})")
    if batch_size < 1:
        raise ReindexError(f"batch size must be at least 1, got {batch_size}")
    if encoder is None and model is None:
        raise ReindexError("name the safe model (a model folder or ONNX export)")
    if engine not in ("local", "ray"):
        raise ReindexError(f"unknown engine '{engine}' (choose from local, ray)")
    if engine == "ray":
        from ...runtime.ray_pool import check_engine, connect

        check_engine(engine, workers, gpus_per_worker, cpus_per_worker)
        if model is None:
            raise ReindexError("engine 'ray' needs the model's path: each Ray actor loads its own Encoder")
        if not dry_run:
            # fails before anything is written
            connect(ray_address, workers, gpus_per_worker, progress=False, cpus_per_worker=cpus_per_worker)
    distributed = None if engine == "local" else {
        "model": str(Path(model).resolve()) if Path(model).exists() else os.fspath(model), "target": store,
        "workers": workers, "gpus_per_worker": gpus_per_worker, "cpus_per_worker": cpus_per_worker,
        "address": ray_address}
    vector_names = parse_vector_options(vectors) if isinstance(vectors, (list, tuple)) else dict(vectors or {})
    sources = {"image_field": image_field, "text_field": text_field, "allow_urls": bool(allow_urls),
               "image_root": str(Path(image_root).resolve()) if image_root else None}
    reader = _reader(sources)
    limits = GateLimits(max_unsafe_top1_increase, max_leak_increase, max_recall_drop)
    gated = None if gate is None or dry_run else gate_settings(gate, image_root=gate_image_root,
                                                               base_model=base_model, limits=limits)
    given, store = store, open_store(store)
    try:
        if encoder is None:
            from ...runtime.encoder import Encoder

            encoder = Encoder.load(model, backend="auto")
        settings = {"mode": mode, "vectors": vector_names, "on_error": on_error,
                    "score_field": _score_field(encoder, mode, score, score_field),
                    "category_scores": bool(category_scores), **sources}
        label = _model_label(model, encoder)
        started = time.time()
        probe = model_probe(encoder)
        job = st.read_job(store, collection)
        if dry_run:
            plan = dry_run_plan(store, collection, encoder, reader, settings, adopt=adopt, batch_size=batch_size,
                                history=(job or {}).get("history", []), unfinished=job if is_active(job) else None)
            return ReindexReport(alias=collection, source=plan["source"], target=plan["target"], mode=plan["mode"],
                                 points=plan["points"], dry_run=True, plan=plan)
        options = dict(max_passes=max_passes, verify_samples=verify_samples, progress=progress)
        resumed, adopted = is_active(job), False
        if is_active(job) and job["plan"]["adopt"]:
            Job(store, job, PointBuilder(Plan.from_dict(job["plan"]), encoder, reader), **options).run()
            job, adopted = st.read_job(store, collection), True
        if resume_switch:
            _override_gate(store, collection, job)
        if is_active(job):
            check_resumable(job, settings, probe)
            if gated is not None and (job.get("gate") or {}).get("settings") != gated:
                raise ReindexError(f"an unfinished reindex of '{collection}' (phase {job['phase']}) was started with "
                                   f"another gate (or none): rerun it as it was started, or run 'safeclip reindex "
                                   f"cleanup' to abandon it")
            logger.info("resuming the unfinished reindex of '%s' into %s (phase %s)", collection,
                        job["plan"]["target"], job["phase"])
            job["plan"]["batch_size"] = batch_size
        elif not new_version and _finished_by(store, collection, job, settings, probe):
            result = report_of(store, job, st.read_failures(store, collection))
            result.already_done, result.seconds = True, round(time.time() - started, 3)
            return result
        else:
            source, plain = resolve_source(store, collection, adopt)
            if gated is not None:
                check_old_collection(store, source, label, gated)
            if plain:
                version = next_version(store, collection, (job or {}).get("history", []))
                adoption = adoption_plan(store, collection, source, batch_size, version)
                job = start_job(store, adoption, label, probe, encoder.space.to_dict(), settings, job, num_ranges)
                Job(store, job, PointBuilder(adoption, encoder, reader), **options).run()
                source, adopted = adoption.target, True
            plan = build_plan(store, collection, source, encoder, settings, batch_size,
                              next_version(store, collection, (job or {}).get("history", [])))
            job = start_job(store, plan, label, probe, encoder.space.to_dict(), settings, job, num_ranges, gated)
        runner = _runner(store, job, PointBuilder(Plan.from_dict(job["plan"]), encoder, reader), options, distributed)
        try:
            runner.run()
        except GateFailed:
            if report is not None:  # both audits and the decision, for the person who decides next
                write_report(report_of(store, job, runner.failures), report)
            raise
        plan = runner.plan
        dropped = False
        if drop_old and store.collection_exists(plan.source) and store.alias_target(collection) == plan.target:
            store.drop_collection(plan.source)
            st.record_history(job, "drop-old", plan.source, None)
            st.write_job(store, job)
            dropped = True
        result = report_of(store, job, runner.failures)
        result.adopted, result.dropped_old, result.resumed = adopted, dropped, resumed
        result.embedded_this_run = runner.embedded_this_run
        result.seconds = round(time.time() - started, 3)
        if report is not None:
            write_report(result, report)
        return result
    finally:
        if store is not given:
            store.close()


def _override_gate(store: VectorStore, collection: str, job: dict[str, Any] | None) -> None:
    """Let a job that a failed gate stopped go on to the switch, reconciling once more first (the
    old collection kept taking writes while a person looked)."""
    gate = (job or {}).get("gate") or {}
    if not is_active(job) or job["phase"] != st.GATE or gate.get("decision", {}).get("passed", True):
        raise ReindexError(f"no reindex of '{collection}' is waiting at a failed gate: nothing to switch "
                           f"(safeclip reindex status shows where it stands)")
    gate["override"] = True
    job["phase"] = st.RECONCILE
    st.write_job(store, job)


def _finished_by(store: VectorStore, collection: str, job: dict[str, Any] | None, settings: dict[str, Any],
                 probe: list[float]) -> bool:
    """Whether the alias already serves the finished version this model built with these settings."""
    return (job is not None and job["phase"] == st.DONE and job.get("settings") == settings
            and same_model(job["probe"], probe) and store.alias_target(collection) == job["plan"]["target"])


def _model_label(model, encoder) -> str:
    """What the index record names as the collection's model: the path ``safeclip search`` loads."""
    if model is not None:
        return str(Path(model).resolve()) if Path(model).exists() else os.fspath(model)
    if encoder.source is None:
        raise ReindexError("the encoder was not built by Encoder.load, so the index record could not name its "
                           "model; pass model=PATH")
    return encoder.source


def _score_field(encoder, mode: str, score: bool, score_field: str | None) -> str | None:
    """Where the moderation score goes: the model's own unsafe score in any mode, else the shift
    score in side-by-side mode (it needs the original vector); None when nothing is stored."""
    if not score:
        return None
    if encoder.space.has_unsafe_score:
        return score_field or UNSAFE_SCORE_FIELD
    return (score_field or DEFAULT_SCORE_FIELD) if mode == SIDE_BY_SIDE else None


def _runner(store: VectorStore, job: dict[str, Any], builder: PointBuilder, options: dict[str, Any],
            distributed: dict[str, Any] | None) -> Job:
    """The local Job, or one whose copy phase runs on Ray (imported only then)."""
    if distributed is None:
        return Job(store, job, builder, **options)
    from .ray_engine import RayJob

    return RayJob(store, job, builder, **distributed, **options)


def _reader(sources: dict[str, Any]) -> SourceReader:
    return SourceReader(image_field=sources["image_field"], image_root=sources["image_root"],
                        text_field=sources["text_field"], allow_urls=sources["allow_urls"])


def complete_point(store: VectorStore, collection: str, point: Point, encoder) -> Point:
    """The complete point to write to a reindexed collection for an application's new item.

    ``point`` carries the payload and the ORIGINAL model's vectors (numpy arrays or lists), as the
    application writes them; the result has the layout of the collection the alias ``collection``
    serves right now: the safe vectors (and, side-by-side, the shift score) its reindex gave every
    point, or the point as given while the alias still serves the original collection. It works in
    every phase of a reindex; the reconciliation carries the write into the version being built.
    """
    point = Point(point.id, dict(point.payload),
                  {name: np.asarray(values, dtype=np.float32) for name, values in point.vectors.items()})
    physical = store.alias_target(collection) or collection
    alias = collection if physical != collection else physical.rsplit("-safeclip-v", 1)[0]
    job = st.read_job(store, alias)
    layout = None if job is None else st.layout_of(job, physical)
    if layout is None:
        if job is not None and physical == job["plan"]["source"] and not st.is_version_of(alias, physical):
            return point  # the original collection, not reindexed yet: the application's own layout
        raise ReindexError(f"'{collection}' on {store.name} serves '{physical}', which no safeclip reindex of "
                           f"'{alias}' built")
    plan = Plan.from_dict(layout)
    built = PointBuilder(plan, encoder, _reader(plan.sources)).build([point])
    if not built.points:
        raise ReindexError(f"point {point.id!r}: {built.failures[0][1]}")
    return built.points[0]


def rollback(store: str | os.PathLike | VectorStore, collection: str) -> str:
    """Point the alias ``collection`` back at the collection it pointed at before the last switch.

    Writes made to the newer collection since the switch are not carried back. Returns the
    collection the alias now points at.
    """
    given, store = store, open_store(store)
    try:
        job = st.read_job(store, collection)
        current = store.alias_target(collection)
        if job is None or current is None:
            raise ReindexError(f"'{collection}' on {store.name} is not an alias managed by safeclip reindex")
        if is_active(job):
            raise ReindexError(f"a reindex of '{collection}' is unfinished (phase {job['phase']}): finish it or run "
                               f"'safeclip reindex cleanup' first")
        previous = next((entry["previous"] for entry in reversed(job["history"])
                         if entry["collection"] == current and entry["action"] in ("reindex", "rollback")), None)
        if previous is None:
            raise ReindexError(f"'{collection}' -> '{current}' has no earlier version to go back to")
        if not store.collection_exists(previous):
            raise ReindexError(f"cannot roll '{collection}' back: the earlier collection '{previous}' was dropped")
        store.switch_alias(collection, previous)
        st.record_history(job, "rollback", previous, current)
        st.write_job(store, job)
        return previous
    finally:
        if store is not given:
            store.close()


def cleanup(store: str | os.PathLike | VectorStore, collection: str, *, dry_run: bool = False) -> list[str]:
    """Drop every ``<collection>-safeclip-v<N>`` the alias does not point at, and abandon an
    unfinished reindex (its partial collection is dropped). Returns the dropped names."""
    given, store = store, open_store(store)
    try:
        current = store.alias_target(collection)
        job = st.read_job(store, collection)
        if is_active(job) and job["phase"] == st.FINAL:
            raise ReindexError(f"the reindex of '{collection}' has switched the alias but not yet carried over the "
                               f"last writes: rerun it to finish before cleaning up")
        drop = [name for _, name in sorted(versions(store, collection).items()) if name != current]
        if dry_run:
            return drop
        for name in drop:
            store.drop_collection(name)
            if job is not None:
                st.record_history(job, "cleanup", name, None)
        if is_active(job):
            st.delete_base(store, collection, job.get("base_chunks", 0))
            job["phase"] = ABANDONED
        if job is not None:
            st.write_job(store, job)
        return drop
    finally:
        if store is not given:
            store.close()
