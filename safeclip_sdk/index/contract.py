"""The deployment contract: how a safe model serves a collection, and the names a reindex writes
and a search reads. Every module that speaks of modes, score fields or the index record takes
them from here.

- A reindex builds a collection in one of two modes: ``full`` (the safe vectors replace the
  re-embedded ones) or ``side-by-side`` (the originals are kept and safe vectors added, with a
  moderation score per point).
- A search runs ``query-side`` (the safe model embeds the query, searched against the original
  vectors) or ``safe`` (against the safe vectors).
- A deployment, as the evaluation compares them, is one of: the base model, query-side, a full
  reindex (searched ``safe``), or side-by-side (query-side plus a filter on the stored score).
- An audit searches a live collection in the modes it supports: ``base`` (the original vectors
  with the base model's queries), ``query-side``, ``safe`` and ``score-filter`` (query-side,
  keeping only items whose stored score is below a threshold).
"""

from __future__ import annotations

# reindex modes
FULL = "full"
SIDE_BY_SIDE = "side-by-side"
REINDEX_MODES = (FULL, SIDE_BY_SIDE)
DEFAULT_REINDEX_MODE = SIDE_BY_SIDE

# search modes
QUERY_SIDE = "query-side"
SAFE = "safe"
SEARCH_MODES = (QUERY_SIDE, SAFE)
#: the mode used on a side-by-side collection when none is asked for
DEFAULT_SIDE_BY_SIDE_MODE = QUERY_SIDE

# deployments of a safe model over a collection embedded with a base model
BASE = "base"
FULL_REINDEX = "full-reindex"
DEPLOYMENTS = (BASE, QUERY_SIDE, FULL_REINDEX, SIDE_BY_SIDE)
DEPLOYMENT_TITLES = {BASE: "base model", QUERY_SIDE: "query-side", FULL_REINDEX: "full reindex",
                     SIDE_BY_SIDE: "side-by-side (query-side + score filter)"}

# how an audit searches a live collection (base, query-side and safe as above)
SCORE_FILTER = "score-filter"
AUDIT_MODES = (BASE, QUERY_SIDE, SAFE, SCORE_FILTER)

# what a reindex writes into payloads and vector names
#: payload key of the side-by-side moderation score (1 - cos(original, safe))
DEFAULT_SCORE_FIELD = "safeclip_shift"
#: payload key of the unsafe score a model gives by itself (its method's classifier), in any mode
UNSAFE_SCORE_FIELD = "safeclip_unsafe_score"
#: payload key of the per-category scores a reindex writes on request (``{category key: probability}``,
#: from the model's fitted category classifier); searches exclude a category through it
CATEGORY_SCORES_FIELD = "safeclip_categories"
#: payload key set on points whose source could not be read and that kept their old vectors
ERROR_FIELD = "safeclip_source_error"
#: suffix of the safe vector added next to a named original vector in side-by-side mode
SAFE_SUFFIX = "_safe"
#: name of the safe vector added next to a collection's unnamed vector
SAFE_UNNAMED = "safe"


def index_key(collection: str) -> str:
    """The state document in which a reindex records how it built ``collection`` (its index record)."""
    return f"index:{collection}"
