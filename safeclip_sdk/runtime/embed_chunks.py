"""The chunks of an ``embed`` job: which items each holds, embedding them, saving them resumably.

Both engines (the local one in ``embed.py`` and the Ray actors in ``embed_ray.py``) embed and save
chunks the same way, so each resumes the other's work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .._utils.files import atomic_write, atomic_write_text
from .encoder import Encoder

ItemId = str | int


def chunk_range(index: int, chunk_size: int, total: int) -> range:
    return range(index * chunk_size, min((index + 1) * chunk_size, total))


def chunk_meta_path(work: Path, index: int) -> Path:
    return work / f"chunk-{index:06d}.json"


def chunk_array_path(work: Path, index: int) -> Path:
    return work / f"chunk-{index:06d}.npy"


def save_chunk(work: Path, index: int, embeddings: np.ndarray, rows: list[int],
                failures: list[dict[str, Any]]) -> None:
    """Embeddings first, then the metadata file whose presence marks the chunk as done."""
    def write_array(tmp: Path) -> None:
        with open(tmp, "wb") as file:
            np.save(file, embeddings, allow_pickle=False)

    atomic_write(chunk_array_path(work, index), write_array)
    atomic_write_text(chunk_meta_path(work, index), json.dumps({"rows": rows, "failures": failures}))


def embed_image_chunk(encoder: Encoder, folder: Path, ids: list[ItemId], span: range):
    result = encoder.encode_image_batch([folder / str(ids[i]) for i in span])
    rows = [span[k] for k in result.indices]
    failures = [{"id": ids[span[f.index]], "reason": f.reason} for f in result.failures]
    return result.embeddings, rows, failures


def embed_text_chunk(encoder: Encoder, ids: list[ItemId], texts: list[str], span: range):
    rows = [i for i in span if texts[i].strip()]
    failures = [{"id": ids[i], "reason": "empty text"} for i in span if not texts[i].strip()]
    if rows:
        embeddings = encoder.encode_text([texts[i] for i in rows])
    else:
        embeddings = np.empty((0, encoder.embed_dim), dtype=np.float32)
    return embeddings, rows, failures
