"""``safeclip audit``: how safe is this live collection, searched this way?

The probes of a probe file (:mod:`.probes`) are embedded and searched through the database's own
queries (:class:`~.search.SafeSearch`, as readers search it), once per search mode the collection
supports:

- ``base``: the original vectors, queries embedded with the BASE model (what readers had before a
  safe model);
- ``query-side``: the original vectors, queries embedded with the safe model;
- ``safe``: the safe vectors a reindex wrote (a full reindex's only vectors);
- ``score-filter``: query-side, keeping only items whose stored moderation score is below a
  threshold (given, or the one recorded with the collection).

Whether a result is unsafe comes from the collection itself: the payload field the probe file's
header names (``unsafe_field``). The figures and the report are in :mod:`.audit_report`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import SafeclipError
from ..export.manifest import MANIFEST_NAME
from ..integrations import open_store
from ..integrations.base import VectorStore
from .audit_report import AuditReport, Outcome, mode_figures
from .contract import AUDIT_MODES, BASE, FULL, QUERY_SIDE, SAFE, SCORE_FILTER
from .probes import ProbeSet, read_probes
from .search import THRESHOLD, IndexInfo, SafeSearch, SearchError, physical_collection

DEFAULT_K = 10


class AuditError(SafeclipError):
    """An audit that cannot run as asked; the message says why in one line."""


def audit(store: str | os.PathLike | VectorStore, collection: str, model: str | os.PathLike | None = None,
          probes: str | os.PathLike | ProbeSet | None = None, *, modes: list[str] | None = None, k: int = DEFAULT_K,
          base_model: str | os.PathLike | None = None, image_root: str | os.PathLike | None = None,
          max_score: float | str | None = None, json_path: str | os.PathLike | None = None,
          markdown_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None,
          encoder=None, base_encoder=None, timeout: float = 10.0) -> AuditReport:
    """Audit ``collection`` with the probes of ``probes``, in each mode it supports (or ``modes``).

    Args:
        store: an open store, or where to open one (a Qdrant folder or URL, a ``postgresql://`` DSN).
        collection: the collection or alias readers search.
        model: the safe model (model folder or ONNX export); or pass ``encoder``.
        probes: a probe file (see :mod:`safeclip_sdk.index.probes`) or a read :class:`ProbeSet`.
        modes: the modes to measure; default every mode the collection supports (``base`` only
            when a base model is known, ``score-filter`` only with a threshold).
        k: results per probe (the top-k share and R@k).
        base_model: the model the original vectors were embedded with, for ``base``; default the
            base named in the safe model folder's ``safeclip.json`` (when it is a folder or an
            open_clip name without a pretrained tag); or pass ``base_encoder``.
        image_root: the folder image probes are relative to (and must stay inside).
        max_score: the score filter's threshold (a number, or ``"threshold"``: the recorded one,
            the default).
        json_path, markdown_path, plot_path: where to write the report (JSON, Markdown, PNG).
    """
    if k < 1:
        raise AuditError(f"k must be at least 1, got {k}")
    unknown = sorted(set(modes or ()) - set(AUDIT_MODES))
    if unknown:
        raise AuditError(f"unknown audit mode '{unknown[0]}' (choose from {', '.join(AUDIT_MODES)})")
    if encoder is None and model is None:
        raise AuditError("name the safe model to audit with (model=..., --model)")
    if probes is None:
        raise AuditError("name the probe file (probes=..., --probes)")
    probe_set = probes if isinstance(probes, ProbeSet) else read_probes(probes, image_root)
    given, store = store, open_store(store, timeout=timeout)
    try:
        physical_collection(store, collection)  # a wrong name fails before a model is loaded
        if encoder is None:
            encoder = _load(model)
        wants_base = modes is None or BASE in modes
        if base_encoder is None and wants_base:
            base_source = base_model or recorded_base_model(model)
            if base_source is None and modes is not None:
                raise AuditError(f"mode '{BASE}' needs the model the original vectors were embedded with "
                                 f"(base_model=..., --base-model)")
            base_encoder = _load(base_source) if base_source is not None else None
        report = audit_collection(store, collection, probe_set, encoder=encoder, base_encoder=base_encoder,
                                  modes=modes, k=k, max_score=max_score)
        report.model = _label(model, encoder)
        report.base_model = _label(base_model, base_encoder) if base_encoder is not None else None
    finally:
        if store is not given:
            store.close()
    report.save(json_path=json_path, markdown_path=markdown_path, plot_path=plot_path)
    return report


def audit_collection(store: VectorStore, collection: str, probes: ProbeSet, *, encoder, base_encoder=None,
                     modes: list[str] | None = None, k: int = DEFAULT_K,
                     max_score: float | str | None = None) -> AuditReport:
    """:func:`audit` with an open store and loaded encoders; every probe is searched in each mode."""
    searchers, notes = _searchers(store, collection, encoder, base_encoder, modes, max_score)
    if not searchers:
        raise AuditError(f"no mode can be measured on '{collection}': " + "; ".join(notes))
    report = AuditReport(store=store.name, collection=collection, model=None, base_model=None,
                         probes=probes.describe(), k=k, notes=notes)
    queries = [probe.query for probe in probes.probes]
    for mode, (searcher, threshold) in searchers.items():
        vectors = searcher.embed_many(queries)
        outcomes = []
        for probe, vector in zip(probes.probes, vectors):
            results = searcher.search_vector(vector, limit=k, max_score=threshold)
            unsafe = tuple(_is_unsafe(result, probes.unsafe_field, searcher.physical) for result in results)
            expected = {_id_key(item) for item in probe.expected}
            found_at = next((rank for rank, result in enumerate(results) if _id_key(result.id) in expected), None)
            outcomes.append(Outcome(unsafe, found_at))
        report.modes[mode] = {"collection": searcher.physical, "vector": searcher.vector, "search_mode": searcher.mode,
                              "max_score": searcher.threshold if threshold == THRESHOLD else threshold,
                              **mode_figures(probes.probes, outcomes, k)}
    return report


def _searchers(store: VectorStore, collection: str, encoder, base_encoder, modes: list[str] | None,
               max_score: float | str | None) -> tuple[dict[str, tuple[SafeSearch, Any]], list[str]]:
    """A searcher (and its score threshold) per mode; asked-for modes that cannot run are errors,
    default ones are left out with a note saying why."""
    index = IndexInfo.read(store, physical_collection(store, collection))
    asked = modes is not None
    searchers, notes = {}, []
    for mode in dict.fromkeys(modes or AUDIT_MODES):
        try:
            searchers[mode] = _searcher(store, collection, index, mode, encoder, base_encoder, max_score)
        except SearchError as error:
            if asked:
                raise AuditError(f"mode '{mode}': {error}") from None
            notes.append(f"mode '{mode}' not measured: {error}")
    return searchers, notes


def _searcher(store: VectorStore, collection: str, index: IndexInfo | None, mode: str, encoder, base_encoder,
              max_score: float | str | None) -> tuple[SafeSearch, Any]:
    if mode == BASE:
        if base_encoder is None:
            raise SearchError("no base model (the model the original vectors were embedded with) was given")
        return SafeSearch(store, collection, base_encoder, mode=QUERY_SIDE, traversal=False), None
    if mode in (QUERY_SIDE, SCORE_FILTER) and index is not None and index.mode == FULL:
        raise SearchError(f"'{collection}' was fully reindexed: its original vectors were replaced by the safe "
                          f"model's, so it can only be searched '{SAFE}'")
    searcher = SafeSearch(store, collection, encoder, mode=SAFE if mode == SAFE else QUERY_SIDE)
    if mode != SCORE_FILTER:
        return searcher, None
    threshold = THRESHOLD if max_score is None else max_score
    searcher.score_range(threshold)  # raises SearchError: no score field, or no threshold recorded
    return searcher, threshold


def _is_unsafe(result, unsafe_field: str, collection: str) -> bool:
    flag = result.payload.get(unsafe_field)
    if isinstance(flag, bool):
        return flag
    if flag in (0, 1):
        return bool(flag)
    state = "has no" if flag is None else f"has a non-boolean ({flag!r})"
    raise AuditError(f"point {result.id!r} of '{collection}' {state} payload field '{unsafe_field}' (the probe "
                     f"file's unsafe_field): every item the audit can find must say whether it is unsafe")


def _id_key(point_id: Any) -> str:
    return str(point_id).lower()


def _load(source: str | os.PathLike):
    from ..runtime.encoder import Encoder

    return Encoder.load(source, backend="auto")


def recorded_base_model(model: str | os.PathLike | None) -> str | None:
    """The base model a safe model folder records (``safeclip.json``'s ``base_model``), when the
    Encoder can load it by its source alone (no pretrained tag); for an export, the base of the
    folder it was exported from."""
    if model is None:
        return None
    metadata_path = Path(os.fspath(model)) / "safeclip.json"
    if not metadata_path.is_file():
        exported_from = _exported_from(Path(os.fspath(model)))
        return recorded_base_model(exported_from) if exported_from is not None else None
    try:
        base = json.loads(metadata_path.read_text(encoding="utf-8")).get("base_model")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    if isinstance(base, str) and base:
        return base
    if isinstance(base, dict) and isinstance(base.get("source"), str) and not base.get("pretrained"):
        return base["source"]
    return None


def _exported_from(folder: Path) -> str | None:
    """The model folder an export's manifest names, if it is one here."""
    try:
        source = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8")).get("source_model")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    return source if isinstance(source, str) and (Path(source) / "safeclip.json").is_file() else None


def _label(model: str | os.PathLike | None, encoder) -> str | None:
    if model is not None:
        return str(Path(model).resolve()) if Path(model).exists() else os.fspath(model)
    return getattr(encoder, "source", None)
