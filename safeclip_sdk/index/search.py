"""Safe search over a vector database: embed a text or image query with a safe model, get the top k.

Two ways to use a safe model against a collection:

- ``query-side``: only the query is embedded with the safe model; it is compared with the
  collection's ORIGINAL vectors (a safe model is trained to map unsafe texts to where the
  original model put their safe counterparts, so its queries fit the original image space);
- ``safe``: the query is compared with the vectors the safe model made for the items themselves
  (a ``full`` reindex replaced the originals, a ``side-by-side`` one stored them as a named vector
  next to them).

``safeclip reindex`` records how it built a collection in a state document ``index:<collection>``;
:class:`SafeSearch` reads it (through the alias) to choose the default mode, the vector to search
and, for a side-by-side collection, the payload field holding each item's moderation score that
``max_score`` filters on. A collection reindexed with per-category scores (``category_scores=True``)
also records each category's payload key and threshold: ``exclude_categories`` keeps only the
items whose score of each named category is below its threshold (through the store's own filter).

A model whose method transforms queries (a hyperbolic model's safety traversal moves a query
lying beyond the safe region back along its geodesic to the safe boundary, so an unsafe query
finds safe results) applies it to every query first. ``traversal=False`` (``--no-traversal``)
searches with the query as it is, for a moderation team that needs to see the unsafe results.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.categories import normalize_category
from ..errors import SafeclipError
from ..integrations import open_store
from .contract import DEFAULT_SIDE_BY_SIDE_MODE, FULL, QUERY_SIDE, SAFE, SEARCH_MODES, index_key
from ..integrations.base import DEFAULT_VECTOR, MissingCollectionError, PointId, Range, VectorStore

#: ``max_score`` value that means "the threshold recorded with the collection"
THRESHOLD = "threshold"


class SearchError(SafeclipError):
    """A search that cannot run as asked; the message says why in one line."""


@dataclass
class SearchResult:
    """One point found: its id, score (larger is closer) and payload."""

    id: PointId
    score: float
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "payload": self.payload}


class SearchResults(list):
    """The results, best first, and how they were found (``mode``, ``vector``, ``collection``)."""

    def __init__(self, results, *, collection: str, mode: str, vector: str):
        super().__init__(results)
        self.collection = collection
        self.mode = mode
        self.vector = vector


@dataclass(frozen=True)
class IndexInfo:
    """How ``safeclip reindex`` built a collection (its ``index:<collection>`` state document)."""

    mode: str
    model: str | None
    space: dict[str, Any]
    vectors: dict[str, str]  # original vector name -> safe vector name
    score_field: str | None
    threshold: float | None
    category_field: str | None = None  # per-category scores: the payload field, the keys in it, the thresholds
    category_keys: dict[str, str] | None = None
    category_thresholds: dict[str, float] | None = None

    @classmethod
    def read(cls, store: VectorStore, collection: str) -> IndexInfo | None:
        document = store.read_state(index_key(collection))
        if document is None:
            return None
        return cls(mode=document["mode"], model=document.get("model"), space=dict(document.get("space") or {}),
                   vectors=dict(document.get("vectors") or {}), score_field=document.get("score_field"),
                   threshold=document.get("threshold"), category_field=document.get("category_field"),
                   category_keys=document.get("category_keys"),
                   category_thresholds=document.get("category_thresholds"))


class SafeSearch:
    """Searches one collection (or alias) with one loaded encoder; reuse it for many queries.

    Args:
        store: an open store (see ``safeclip_sdk.integrations.open_store``).
        collection: a collection or, usually, the alias readers use; the alias is followed at
            every search, so a reindex that switches it is picked up.
        encoder: a loaded ``safeclip_sdk.runtime.encoder.Encoder`` (the safe model).
        mode: ``query-side`` or ``safe``; default: what the collection was built for (``safe``
            after a full reindex, :data:`DEFAULT_SIDE_BY_SIDE_MODE` after a side-by-side one,
            ``query-side`` for a collection safeclip did not build).
        vector: the ORIGINAL vector to search (or its safe vector's name); needed only when the
            collection has several.
        traversal: apply the model's query transformation before searching (default; a
            hyperbolic model moves unsafe queries back to the safe region); False searches with
            the queries as they are. Models without one ignore it.
    """

    def __init__(self, store: VectorStore, collection: str, encoder, *, mode: str | None = None,
                 vector: str | None = None, traversal: bool = True):
        if mode is not None and mode not in SEARCH_MODES:
            raise SearchError(f"unknown search mode '{mode}' (choose from {', '.join(SEARCH_MODES)})")
        self.traversal = traversal and encoder.inference.query_transform is not None
        if self.traversal:
            try:
                encoder.inference.check_query_transform()
            except SafeclipError as error:
                raise SearchError(str(error)) from None
        self.store = store
        self.collection = collection
        self.encoder = encoder
        self._asked_mode = mode
        self._asked_vector = vector
        self.physical: str | None = None
        self._resolve()

    # --- what to search ---

    def _resolve(self) -> None:
        """Find the collection behind the alias and decide mode, vector and score field."""
        store, name = self.store, self.collection
        physical = physical_collection(store, name)
        specs = store.vector_specs(physical)
        index = IndexInfo.read(store, physical)
        original, names_safe_vector = self._original_vector(name, specs, index)
        mode = self._asked_mode or (SAFE if names_safe_vector else _default_mode(index))
        if mode == SAFE:
            if index is None:
                raise SearchError(f"'{name}' on {store.name} has no safe vectors (safeclip reindex did not build "
                                  f"it): search it with mode '{QUERY_SIDE}'")
            using = index.vectors.get(original)
            if using is None:
                raise SearchError(f"'{name}' has no safe vector for {_show(original)} "
                                  f"(re-embedded: {', '.join(_show(v) for v in index.vectors) or 'none'})")
        else:
            if index is not None and index.mode == FULL and original in index.vectors:
                raise SearchError(f"'{name}' was fully reindexed: its {_show(original)} holds the safe model's "
                                  f"embeddings, not the original ones; search it with mode '{SAFE}' (or search "
                                  f"the previous collection query-side)")
            using = original
        if using not in specs:
            raise SearchError(f"collection '{physical}' has no {_show(using)}")
        expected = self.encoder.space.stored_dim
        if specs[using].size != expected:
            raise SearchError(f"collection '{physical}' {_show(using)} has {specs[using].size} dimensions, but the "
                              f"model's query vectors have {expected}: use a model of the collection's "
                              f"embedding size")
        if index is not None and mode == SAFE and index.space and index.space != self.encoder.space.to_dict():
            raise SearchError(f"collection '{physical}' was embedded in the space {index.space}, but the model "
                              f"embeds into {self.encoder.space.to_dict()}")
        self.physical, self.index, self.mode, self.vector = physical, index, mode, using

    def _original_vector(self, name: str, specs: Mapping[str, Any], index: IndexInfo | None) -> tuple[str, bool]:
        """The original vector to search, and whether the caller named its safe vector instead."""
        safe_to_original = {safe: original for original, safe in (index.vectors if index else {}).items()
                            if safe != original}
        asked = self._asked_vector
        if asked is not None:
            if asked in safe_to_original:
                if self._asked_mode == QUERY_SIDE:
                    raise SearchError(f"{_show(asked)} holds safe embeddings; for mode '{QUERY_SIDE}' name the "
                                      f"original vector {_show(safe_to_original[asked])}")
                return safe_to_original[asked], True
            if asked not in specs:
                raise SearchError(f"'{name}' has no {_show(asked)} (it has: {', '.join(_show(v) for v in specs)})")
            return asked, False
        originals = [vector for vector in specs if vector not in safe_to_original]
        if len(originals) == 1:
            return originals[0], False
        raise SearchError(f"'{name}' has several vectors ({', '.join(_show(v) for v in originals)}): "
                          f"choose one with vector=... (--vector)")

    @property
    def score_field(self) -> str | None:
        return self.index.score_field if self.index else None

    @property
    def threshold(self) -> float | None:
        return self.index.threshold if self.index else None

    # --- searching ---

    def embed(self, query) -> np.ndarray:
        """The query vector: a text (``str``) or an image (a ``Path``, bytes or a PIL image)."""
        return self.embed_many([query])[0]

    def embed_many(self, queries: Sequence[Any]) -> np.ndarray:
        """The query vectors of many texts and images, in order; each modality embedded in batches."""
        by_modality: dict[str, list[int]] = {"text": [], "image": []}
        for index, query in enumerate(queries):
            if isinstance(query, str):
                if not query.strip():
                    raise SearchError("the text query is empty")
                by_modality["text"].append(index)
            elif isinstance(query, (os.PathLike, bytes, bytearray, memoryview, Image.Image)):
                by_modality["image"].append(index)
            else:
                raise SearchError(f"a query is a text (str) or an image (a Path, bytes or a PIL image), "
                                  f"not {type(query).__name__}")
        vectors = np.empty((len(queries), self.encoder.space.stored_dim), dtype=np.float32)
        for modality, indices in by_modality.items():
            if not indices:
                continue
            chosen = [queries[index] for index in indices]
            embedding = (self.encoder.encode_text(chosen) if modality == "text"
                         else self.encoder.encode_image(chosen))
            if self.traversal:
                embedding = self.encoder.inference.transform_queries(embedding, modality)
            vectors[indices] = self.encoder.space.to_query(embedding)
        return vectors

    def search(self, query, *, limit: int = 10, max_score: float | str | None = None,
               exclude_categories: Sequence[str] = ()) -> SearchResults:
        """The ``limit`` points nearest to ``query``, best first.

        ``max_score`` keeps only points whose moderation score (the collection's score field) is
        below it; ``"threshold"`` uses the threshold recorded with the collection.
        ``exclude_categories`` keeps only points whose per-category score of each is below the
        category's recorded threshold (points without scores are left out too).
        """
        if limit < 1:
            raise SearchError(f"limit must be at least 1, got {limit}")
        self.score_range(max_score)  # a bad filter fails before the query is embedded
        self.category_ranges(exclude_categories)
        return self.search_vector(self.embed(query), limit=limit, max_score=max_score,
                                  exclude_categories=exclude_categories)

    def search_vector(self, vector: np.ndarray, *, limit: int = 10, max_score: float | str | None = None,
                      exclude_categories: Sequence[str] = ()) -> SearchResults:
        """:meth:`search` with a query vector from :meth:`embed` or :meth:`embed_many`."""
        if limit < 1:
            raise SearchError(f"limit must be at least 1, got {limit}")
        if self.store.alias_target(self.collection) not in (None, self.physical):
            self._resolve()  # the alias moved (a reindex switched it): follow it
        score_range = self.score_range(max_score)
        payload_range = [*([score_range] if score_range else []), *self.category_ranges(exclude_categories)] or None
        try:
            hits = self.store.query(self.physical, vector, using=self.vector, limit=limit, payload_range=payload_range)
        except MissingCollectionError:  # dropped after the alias moved on between the check and the query
            self._resolve()
            hits = self.store.query(self.physical, vector, using=self.vector, limit=limit, payload_range=payload_range)
        return SearchResults([SearchResult(hit.id, hit.score, hit.payload) for hit in hits],
                             collection=self.physical, mode=self.mode, vector=self.vector)

    def score_range(self, max_score: float | str | None) -> Range | None:
        """The payload filter ``max_score`` asks for (SearchError when the collection has no score
        or, for ``"threshold"``, no recorded threshold)."""
        if max_score is None:
            return None
        if self.score_field is None:
            raise SearchError(f"'{self.collection}' has no moderation score to filter on (only a side-by-side "
                              f"reindex with a score stores one): drop max_score")
        if max_score == THRESHOLD:
            if self.threshold is None:
                raise SearchError(f"'{self.collection}' has no recorded threshold: give max_score as a number")
            max_score = self.threshold
        try:
            return Range(self.score_field, lt=float(max_score))
        except (TypeError, ValueError):
            raise SearchError(f"max_score must be a number or '{THRESHOLD}', got {max_score!r}") from None

    def category_ranges(self, exclude_categories: Sequence[str]) -> list[Range]:
        """The payload filters that leave out each category of ``exclude_categories`` (SearchError
        when the collection has no per-category scores or does not know a category)."""
        if isinstance(exclude_categories, str):
            exclude_categories = [exclude_categories]
        if not exclude_categories:
            return []
        index = self.index
        if index is None or not index.category_field:
            raise SearchError(f"'{self.collection}' has no per-category scores (reindex it with category_scores=True, "
                              f"--category-scores): drop the excluded categories")
        ranges = []
        for name in exclude_categories:
            category = normalize_category(name) if str(name).strip() else str(name)
            if category not in index.category_keys:
                raise SearchError(f"category '{name}' is not one of the categories scored in '{self.collection}' "
                                  f"({', '.join(index.category_keys)})")
            ranges.append(Range(f"{index.category_field}.{index.category_keys[category]}",
                                lt=float(index.category_thresholds[category])))
        return ranges


def search(store: VectorStore | str | os.PathLike, collection: str, query, *,
           model: str | os.PathLike | None = None, encoder=None, limit: int = 10, mode: str | None = None,
           vector: str | None = None, max_score: float | str | None = None,
           exclude_categories: Sequence[str] = (), timeout: float = 10.0, traversal: bool = True) -> SearchResults:
    """Search ``collection`` safely with a text or image ``query``; returns the top ``limit``.

    Args:
        store: an open store, or where to open one (a folder, ``":memory:"``, or a
            server URL such as ``https://host:6333`` with the key in ``QDRANT_API_KEY``).
        collection: the collection or alias to search.
        query: a text (``str``) or an image (a ``pathlib.Path``, encoded bytes or a PIL image).
        model: the safe model (a model folder or an ONNX export; the fastest runtime is used).
            Default: the model recorded when safeclip reindexed the collection.
        encoder: an already loaded ``Encoder`` instead of ``model``.
        limit: how many results.
        mode: ``query-side`` or ``safe`` (see :class:`SafeSearch` for the default).
        vector: which vector to search when the collection has several.
        max_score: keep only points whose moderation score is below this (or ``"threshold"``).
        exclude_categories: leave out points that the per-category scores stored by a reindex
            (``category_scores=True``) flag in any of these categories.
        timeout: seconds a server request may take (when ``store`` is a URL).
        traversal: apply the model's query transformation first (default; a hyperbolic model
            moves unsafe queries back to the safe region); False searches with the query as it is.
    """
    given, store = store, open_store(store, timeout=timeout)
    try:
        physical_collection(store, collection)  # a wrong name fails before a model is loaded
        if encoder is None:
            encoder = _load_encoder(store, collection, model)
        searcher = SafeSearch(store, collection, encoder, mode=mode, vector=vector, traversal=traversal)
        return searcher.search(query, limit=limit, max_score=max_score, exclude_categories=exclude_categories)
    finally:
        if store is not given:
            store.close()


def physical_collection(store: VectorStore, name: str) -> str:
    """The collection behind ``name`` (an alias or a collection); MissingCollectionError if none."""
    physical = store.alias_target(name) or name
    if not store.collection_exists(physical):
        raise MissingCollectionError(f"{store.name}: no collection or alias '{name}'")
    return physical


def _load_encoder(store: VectorStore, collection: str, model: str | os.PathLike | None):
    from ..runtime.encoder import Encoder

    if model is None:
        index = IndexInfo.read(store, physical_collection(store, collection))
        if index is None or not index.model:
            raise SearchError(f"name the safe model to search '{collection}' with (model=..., --model)")
        model = index.model
        if not Path(model).exists():
            raise SearchError(f"'{collection}' was built with the model '{model}', which is not on this machine: "
                              f"name it with model=... (--model)")
    return Encoder.load(model, backend="auto")


def _default_mode(index: IndexInfo | None) -> str:
    if index is None:
        return QUERY_SIDE
    return SAFE if index.mode == FULL else DEFAULT_SIDE_BY_SIDE_MODE


def _show(vector: str) -> str:
    return "the unnamed vector" if vector == DEFAULT_VECTOR else f"vector '{vector}'"
