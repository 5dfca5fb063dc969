"""``--dry-run``: what a reindex would do and how long it would take, without writing anything."""

from __future__ import annotations

import time
from typing import Any

from ...integrations.base import VectorStore
from .pipeline import PointBuilder
from .engine import next_version
from .plan import Plan, build_plan, has_field, resolve_source, show_vector, version_name
from .sources import describe_source

KIND_OF = {"image_field": "image", "text_field": "text"}

SAMPLE_BATCHES = 3


def dry_run_plan(store: VectorStore, alias: str, encoder, reader, settings: dict[str, Any], *, adopt: bool,
                 batch_size: int, history: list[dict[str, Any]], unfinished: dict[str, Any] | None) -> dict[str, Any]:
    """The plan of a reindex, with an estimate from embedding a few real batches (nothing is written)."""
    source, plain = resolve_source(store, alias, adopt=True)
    version = next_version(store, alias, history)
    plan: Plan = build_plan(store, alias, source, encoder, settings, batch_size, version + 1 if plain else version)
    count = store.count(source)
    builder = PointBuilder(plan, encoder, reader)
    sampled, failed, embed_seconds, read_seconds = 0, 0, 0.0, 0.0
    found = {option: 0 for option in ("image_field", "text_field") if settings[option]}
    examples: list[dict[str, Any]] = []
    unreadable: list[dict[str, Any]] = []
    start = None
    for _ in range(SAMPLE_BATCHES):
        began = time.perf_counter()
        points, start = store.scroll(source, start=start, limit=batch_size, with_vectors=True)
        read_seconds += time.perf_counter() - began
        began = time.perf_counter()
        built = builder.build(points)
        embed_seconds += time.perf_counter() - began
        sampled += len(points)
        failed += len(built.failures)
        unreadable += [{"id": point.id, "reason": reason} for point, reason in built.failures][:3 - len(unreadable)]
        for point in points:
            for option in found:
                found[option] += has_field(point.payload, settings[option])
            if len(examples) < 3:
                examples.append({"id": point.id, **{settings[option]: describe_source(reader, point.payload, kind)
                                                    for option, kind in KIND_OF.items() if option in found}})
        if start is None:
            break
    # each point is read about twice more (copy and one reconciliation pass) and written once
    per_point = (embed_seconds + 3 * read_seconds) / max(sampled, 1)
    return {
        "store": store.name, "alias": alias, "source": source, "adopt_first": (version_name(alias, version) + ("" if adopt else " (needs --adopt)")) if plain else None,
        "target": plan.target, "mode": plan.mode, "points": count,
        "re-embedded": {show_vector(name): f"from {kind} -> {show_vector(plan.safe_names[name])}"
                        for name, kind in plan.kinds.items()},
        "target_vectors": {name or "(unnamed)": f"size {spec.size}, {spec.distance}"
                           for name, spec in plan.target_specs.items()},
        "score_field": plan.score_field, "on_error": plan.on_error, "batch_size": batch_size,
        "sample": {"points": sampled, "fields_found": {settings[o]: n for o, n in found.items()},
                   "unreadable": failed, "examples": examples, "unreadable_examples": unreadable},
        "estimated_seconds": round(per_point * count, 2),
        "unfinished_job": None if unfinished is None else {"phase": unfinished["phase"],
                                                           "target": unfinished["plan"]["target"]},
    }
