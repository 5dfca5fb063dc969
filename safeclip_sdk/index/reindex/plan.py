"""What a reindex will do: names, vector layout, id ranges; checked before anything is written.

A reindex reads the collection an alias (the name readers use) points at and writes a new
versioned collection ``<alias>-safeclip-v<N>`` beside it. Which stored vectors get re-embedded,
under which names the safe vectors land and what size and distance they need all follow from the
source collection's vectors, the options and the model's embedding space.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import SafeclipError
from ...integrations.base import DEFAULT_VECTOR, PointId, VectorSpec, VectorStore
from ..contract import (CATEGORY_SCORES_FIELD, DEFAULT_SCORE_FIELD, ERROR_FIELD, FULL, REINDEX_MODES, SAFE_SUFFIX,
                        SAFE_UNNAMED, UNSAFE_SCORE_FIELD, index_key)


KINDS = ("image", "text")
ON_ERROR = ("keep", "skip")


DEFAULT_BATCH_SIZE = 128
DEFAULT_RANGES = 8
VERSION_PATTERN = "{alias}-safeclip-v{version}"


class ReindexError(SafeclipError):
    """A reindex that cannot start or continue; the message says why in one line."""


def version_name(alias: str, version: int) -> str:
    return VERSION_PATTERN.format(alias=alias, version=version)


def versions(store: VectorStore, alias: str) -> dict[int, str]:
    """Existing versioned collections of ``alias``, by version number."""
    pattern = re.compile(re.escape(alias) + r"-safeclip-v(\d+)$")
    found = {}
    for name in store.list_collections():
        match = pattern.match(name)
        if match:
            found[int(match.group(1))] = name
    return found


def safe_vector_name(name: str) -> str:
    return SAFE_UNNAMED if name == DEFAULT_VECTOR else name + SAFE_SUFFIX


def show_vector(name: str) -> str:
    return "the unnamed vector" if name == DEFAULT_VECTOR else f"vector '{name}'"


@dataclass
class Plan:
    """Everything a reindex needs to know before it writes; stored with the job so a rerun agrees."""

    alias: str
    source: str
    target: str
    adopt: bool
    mode: str
    kinds: dict[str, str]  # re-embedded vector name -> "image" | "text"
    safe_names: dict[str, str]  # re-embedded vector name -> name of its safe vector in the target
    source_specs: dict[str, VectorSpec]
    target_specs: dict[str, VectorSpec]
    score_field: str | None
    on_error: str
    batch_size: int
    sources: dict[str, Any] = field(default_factory=dict)  # image_field, image_root, text_field, allow_urls
    # per-category scores (None: not written): the payload field, each category's key in it, and the
    # threshold above which a search excludes the category
    category_field: str | None = None
    category_keys: dict[str, str] = field(default_factory=dict)
    category_thresholds: dict[str, float] = field(default_factory=dict)

    def reserved_fields(self) -> tuple[str, ...]:
        """Payload keys the reindex writes (left out of payload comparisons)."""
        defaults = (ERROR_FIELD, DEFAULT_SCORE_FIELD, UNSAFE_SCORE_FIELD, CATEGORY_SCORES_FIELD)
        extra = tuple(name for name in (self.score_field, self.category_field) if name and name not in defaults)
        return defaults + extra

    def category_record(self) -> dict[str, Any]:
        """What the index record says of the per-category scores, for searches that exclude a
        category (nothing when the reindex writes none)."""
        if not self.category_field:
            return {}
        return {"category_field": self.category_field, "category_keys": self.category_keys,
                "category_thresholds": self.category_thresholds}

    def added_vectors(self) -> set[str]:
        """Safe vectors added beside their originals (side-by-side): a point whose source fails
        gets none, even when its source point has one from an earlier reindex."""
        return {safe for name, safe in self.safe_names.items() if safe != name}

    def to_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias, "source": self.source, "target": self.target, "adopt": self.adopt,
            "mode": self.mode, "kinds": self.kinds, "safe_names": self.safe_names,
            "source_specs": {name: _spec_dict(spec) for name, spec in self.source_specs.items()},
            "target_specs": {name: _spec_dict(spec) for name, spec in self.target_specs.items()},
            "score_field": self.score_field, "on_error": self.on_error, "batch_size": self.batch_size,
            "sources": self.sources, "category_field": self.category_field, "category_keys": self.category_keys,
            "category_thresholds": self.category_thresholds,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Plan:
        values = dict(values)
        for key in ("source_specs", "target_specs"):
            values[key] = {name: VectorSpec(spec["size"], spec["distance"], spec.get("options", {}))
                           for name, spec in values[key].items()}
        return cls(**values)


def _spec_dict(spec: VectorSpec) -> dict[str, Any]:
    return {"size": spec.size, "distance": spec.distance, "options": dict(spec.options)}


def resolve_source(store: VectorStore, name: str, adopt: bool) -> tuple[str, bool]:
    """The physical collection behind ``name`` and whether it is a plain collection to adopt."""
    target = store.alias_target(name)
    if target is not None:
        return target, False
    if store.collection_exists(name):
        if not adopt:
            raise ReindexError(
                f"'{name}' on {store.name} is a plain collection, not an alias: pass --adopt to copy it into "
                f"{version_name(name, 1)} and replace it by an alias of that name (a moment of downtime "
                f"and a write pause: see docs/reindex.md)")
        return name, True
    raise ReindexError(f"no collection or alias '{name}' on {store.name}")


def choose_vectors(source_specs: Mapping[str, VectorSpec], vector_names: Mapping[str, str] | None,
                   image_field: str | None, text_field: str | None, collection: str,
                   earlier_safe: Sequence[str] = ()) -> dict[str, str]:
    """Which stored vectors to re-embed, and from which kind of source (``{name: kind}``).

    ``vector_names`` maps a kind to a vector name (``--vector image=NAME``). Without it, a
    collection with a single vector (not counting ``earlier_safe``, the safe vectors an earlier
    side-by-side reindex added) re-embeds that one from the one source field given.
    """
    source_specs = {name: spec for name, spec in source_specs.items() if name not in earlier_safe}
    fields = {"image": image_field, "text": text_field}
    if not image_field and not text_field:
        raise ReindexError("name the items' source with --image-field (and --image-root) and/or --text-field")
    if vector_names:
        kinds = {}
        for kind, name in vector_names.items():
            if kind not in KINDS:
                raise ReindexError(f"--vector {kind}={name}: the kind must be image or text")
            if name not in source_specs:
                known = ", ".join(repr(n) for n in source_specs) or "none"
                raise ReindexError(f"collection '{collection}' has no vector '{name}' (it has: {known})")
            if not fields[kind]:
                raise ReindexError(f"--vector {kind}={name} needs --{kind}-field to say where each item's {kind} is")
            kinds[name] = kind
        return kinds
    given = [kind for kind in KINDS if fields[kind]]
    if len(source_specs) != 1 or len(given) != 1:
        names = ", ".join(repr(n) for n in source_specs)
        raise ReindexError(f"collection '{collection}' has vectors {names}: say which one each source re-embeds "
                           f"with --vector image=NAME / --vector text=NAME")
    return {next(iter(source_specs)): given[0]}


def target_layout(source_specs: Mapping[str, VectorSpec], kinds: Mapping[str, str], mode: str, space,
                  collection: str) -> tuple[dict[str, VectorSpec], dict[str, str]]:
    """The target collection's vectors and the name each re-embedded vector's safe vector gets.

    Full mode replaces a vector under its own name, so readers keep querying the same name; its
    size must equal what the model stores (a different size would break every reader's query at
    the switch, and ``--on-error keep`` could not keep an old vector). Side-by-side adds a new
    vector of the model's size and distance and leaves the original untouched.
    """
    if mode not in REINDEX_MODES:
        raise ReindexError(f"unknown mode '{mode}' (choose from {', '.join(REINDEX_MODES)})")
    model_spec = dict(size=space.stored_dim, distance=space.distance)
    specs = dict(source_specs)
    safe_names = {}
    for name in kinds:
        original = source_specs[name]
        if mode == FULL:
            if original.size != space.stored_dim:
                raise ReindexError(
                    f"{show_vector(name)} of '{collection}' has size {original.size} but the model stores "
                    f"{space.stored_dim}-dimensional vectors: full mode replaces it in place, so the sizes must "
                    f"match (use --mode side-by-side to add the safe vector next to it)")
            specs[name] = VectorSpec(options=dict(original.options), **model_spec)
            safe_names[name] = name
        else:
            # a source built by an earlier side-by-side reindex already has it: it is replaced
            safe = safe_vector_name(name)
            if safe in kinds:
                raise ReindexError(f"{show_vector(safe)} of '{collection}' cannot be both re-embedded and the "
                                   f"safe vector of {show_vector(name)}")
            specs[safe] = VectorSpec(options=dict(original.options), **model_spec)
            safe_names[name] = safe
    return specs, safe_names


# --- ids and ranges ---

def id_order(point_id: PointId) -> tuple[int, Any]:
    """Sort key matching the store's scroll order: integers first, then UUIDs."""
    return (0, point_id) if isinstance(point_id, int) else (1, str(point_id))


def split_ranges(store: VectorStore, collection: str, count: int, num_ranges: int,
                 page: int = 2048) -> list[dict[str, Any]]:
    """``num_ranges`` contiguous id ranges of about equal size, each with its own cursor.

    Boundaries are ids read from one id-only scroll; range ``i`` covers ``[start, end)`` (None is
    open). Workers can take ranges independently: each range's cursor is its own.
    """
    num_ranges = max(1, min(num_ranges, count // 64 or 1))
    bounds: list[PointId] = []
    if num_ranges > 1:
        step = count / num_ranges
        wanted = [round(step * i) for i in range(1, num_ranges)]
        position, start = 0, None
        while wanted:
            points, start = store.scroll(collection, start=start, limit=page, with_payload=False)
            while wanted and wanted[0] < position + len(points):
                bounds.append(points[wanted.pop(0) - position].id)
            position += len(points)
            if start is None:
                break
    edges = [None, *bounds, None]
    return [{"start": edges[i], "end": edges[i + 1], "cursor": edges[i], "done": False}
            for i in range(len(edges) - 1)]


def in_range(point_id: PointId, end: PointId | None) -> bool:
    return end is None or id_order(point_id) < id_order(end)


def model_probe(encoder) -> list[float]:
    """What the model computes for a fixed probe text: how a resumed job recognises its model
    (compared by cosine, so the torch and ONNX runtimes of one model agree)."""
    embedding = encoder.encode_text(["safeclip reindex probe: a photo of a red bicycle"])[0]
    return [round(float(value), 6) for value in embedding]


def same_model(probe_a: Sequence[float], probe_b: Sequence[float]) -> bool:
    a, b = np.asarray(probe_a, dtype=np.float64), np.asarray(probe_b, dtype=np.float64)
    return a.shape == b.shape and float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)) >= 0.999


def has_field(payload: Mapping[str, Any], name: str) -> bool:
    """Whether ``payload`` has the (possibly dotted) field ``name``."""
    from .sources import lookup

    return lookup(payload, name) is not lookup({}, name)  # lookup's "missing" marker


def parse_vector_options(values: Sequence[str]) -> dict[str, str]:
    """``["image=img", "text=txt"]`` -> ``{"image": "img", "text": "txt"}`` (``image=`` is the unnamed vector)."""
    parsed = {}
    for value in values:
        kind, sep, name = value.partition("=")
        if not sep:
            raise ReindexError(f"--vector {value}: expected KIND=NAME, e.g. image=clip_image")
        parsed[kind.strip()] = name.strip()
    return parsed


def build_plan(store: VectorStore, alias: str, source: str, encoder, settings: dict[str, Any], batch_size: int,
               version: int) -> Plan:
    """The plan of a re-embedding from ``source`` into version ``version`` of ``alias``, checked
    against the source's vectors and fields before anything is written."""
    specs = store.vector_specs(source)
    earlier = store.read_state(index_key(source)) or {}
    earlier_safe = [name for original, name in earlier.get("vectors", {}).items() if name != original]
    kinds = choose_vectors(specs, settings["vectors"], settings["image_field"], settings["text_field"], source,
                           earlier_safe)
    target_specs, safe_names = target_layout(specs, kinds, settings["mode"], encoder.space, source)
    score_field = settings["score_field"]
    if score_field and not encoder.space.has_unsafe_score:
        for name in kinds:
            if specs[name].size != encoder.space.dim:
                raise ReindexError(f"the shift score compares the original and the safe embedding, but vector "
                                   f"'{name}' of '{source}' has size {specs[name].size} and the model embeds in "
                                   f"{encoder.space.dim} dimensions: pass --no-score")
    category_keys, category_thresholds = category_layout(encoder, kinds) if settings["category_scores"] else ({}, {})
    check_fields(store, source, settings)
    return Plan(alias=alias, source=source, target=version_name(alias, version), adopt=False, mode=settings["mode"],
                kinds=kinds, safe_names=safe_names, source_specs=specs, target_specs=target_specs,
                score_field=score_field, on_error=settings["on_error"], batch_size=batch_size,
                sources={key: settings[key] for key in ("image_field", "image_root", "text_field", "allow_urls")},
                category_field=CATEGORY_SCORES_FIELD if settings["category_scores"] else None,
                category_keys=category_keys, category_thresholds=category_thresholds)


def category_payload_key(category: str) -> str:
    """A category's key inside the scores' payload field: every run of characters other than
    letters, digits, ``_`` and ``-`` becomes ``_`` (``drug use`` -> ``drug_use``), so that every
    store's payload path syntax reads it."""
    return re.sub(r"[^0-9A-Za-z_-]+", "_", category).strip("_") or "category"


def category_layout(encoder, kinds: Mapping[str, str]) -> tuple[dict[str, str], dict[str, float]]:
    """Each category's payload key and the threshold above which a search excludes it.

    A point's score of a category is the highest of its re-embedded vectors' scores, so the
    threshold is the lowest of their modalities' thresholds (with one re-embedded vector: its own).
    """
    classifier = encoder.category_classifier
    if classifier is None:
        raise ReindexError("per-category scores need a model with a fitted category classifier: run `safeclip "
                           "classify fit MODEL --data train.jsonl --val-data val.jsonl` first")
    modalities = sorted(set(kinds.values()))
    for modality in modalities:
        if modality not in classifier.modalities:
            raise ReindexError(f"the model's category classifier has no {modality} head (it was fitted on "
                               f"{' and '.join(classifier.modalities)} only), so {modality} items cannot be scored")
    keys = {category: category_payload_key(category) for category in classifier.categories}
    clashes = [category for category in keys if list(keys.values()).count(keys[category]) > 1]
    if clashes:
        raise ReindexError(f"the categories {' and '.join(repr(c) for c in clashes)} would share the payload key "
                           f"'{keys[clashes[0]]}'")
    thresholds = {category: min(classifier.thresholds(modality)[category] for modality in modalities)
                  for category in classifier.categories}
    return keys, thresholds


def adoption_plan(store: VectorStore, alias: str, source: str, batch_size: int, version: int) -> Plan:
    """A verbatim copy of a plain collection into the first version (no model, nothing re-embedded)."""
    specs = store.vector_specs(source)
    return Plan(alias=alias, source=source, target=version_name(alias, version), adopt=True, mode="copy", kinds={},
                safe_names={}, source_specs=specs, target_specs=specs, score_field=None, on_error="keep",
                batch_size=batch_size, sources={})


def check_fields(store: VectorStore, source: str, settings: dict[str, Any], sample: int = 256) -> None:
    """A source field that no point of the first page has is almost surely misspelt: refuse it."""
    points, _ = store.scroll(source, limit=sample)
    if not points:
        return
    for option in ("image_field", "text_field"):
        name = settings[option]
        if name and not any(has_field(point.payload, name) for point in points):
            seen = sorted({key for point in points for key in point.payload})[:12]
            raise ReindexError(f"payload field '{name}' (--{option.replace('_', '-')}) is in none of the first "
                               f"{len(points)} points of '{source}' (fields seen: {', '.join(seen) or 'none'})")
