"""``embed`` on Ray Data: the pending chunks through an actor pool where each actor holds one Encoder.

One row per chunk (``batch_size=1``): an actor embeds the chunk's items and sends back the
embeddings, the rows that got one and the failures; this process saves each chunk as it arrives,
in the same files as the local engine, so the two engines resume each other's work and assemble
the same output.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import ray_pool as dray
from .embed_chunks import chunk_range, embed_image_chunk, embed_text_chunk, save_chunk


def embed_chunks_ray(model, inputs: Path, work: Path, state: dict[str, Any], kind: str, pending: list[int],
                     progress: bool, on_chunk_done: Callable[[int, int], None] | None, *,
                     encoder_options: dict[str, Any], engine: str = "ray", workers: int = 1,
                     gpus_per_worker: float = 0, cpus_per_worker: float = 1, address: str | None = None) -> None:
    """Embed and save the chunks ``pending`` of the job in ``work`` on a Ray actor pool."""
    dray.check_engine(engine, workers, gpus_per_worker, cpus_per_worker)
    dray.connect(address, workers, gpus_per_worker, progress=False, cpus_per_worker=cpus_per_worker)
    ids, chunk_size = state["ids"], state["chunk_size"]
    chunk_count = math.ceil(len(ids) / chunk_size)
    done_items = len(ids) - sum(len(chunk_range(i, chunk_size, len(ids))) for i in pending)
    model = str(Path(model).resolve()) if Path(model).exists() else str(model)
    dataset = dray.ray.data.from_items([{"chunk": index} for index in pending]).map_batches(
        ChunkActor, fn_constructor_args=(model, encoder_options, kind, str(inputs.resolve()), ids,
                                         state.get("texts"), chunk_size),
        **dray.pool_options(workers, gpus_per_worker, 1, cpus_per_worker))
    with tqdm(total=len(ids), initial=done_items, unit=kind, desc="embed", disable=not progress) as bar:
        try:
            for batch in dataset.iter_batches(batch_format="numpy", batch_size=1):
                index = int(batch["chunk"][0])
                embeddings = np.load(io.BytesIO(bytes(batch["embeddings"][0])), allow_pickle=False)
                meta = json.loads(str(batch["meta"][0]))
                save_chunk(work, index, embeddings, meta["rows"], meta["failures"])
                bar.update(len(chunk_range(index, chunk_size, len(ids))))
                if on_chunk_done is not None:
                    on_chunk_done(index, chunk_count)
        except Exception as error:
            raise dray.unwrap(error) from error


class ChunkActor(dray.EncoderActor):
    """Holds one Encoder; embeds whole chunks of the job's items."""

    def __init__(self, model: str, encoder_options: dict[str, Any], kind: str, inputs: str, ids: list,
                 texts: list[str] | None, chunk_size: int):
        super().__init__(model, **encoder_options)
        self.kind, self.inputs, self.ids, self.texts, self.chunk_size = kind, Path(inputs), ids, texts, chunk_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_loaded()
        arrays, metas = [], []
        for index in batch["chunk"]:
            span = chunk_range(int(index), self.chunk_size, len(self.ids))
            if self.kind == "image":
                embeddings, rows, failures = embed_image_chunk(self.encoder, self.inputs, self.ids, span)
            else:
                embeddings, rows, failures = embed_text_chunk(self.encoder, self.ids, self.texts, span)
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(embeddings, dtype=np.float32), allow_pickle=False)
            arrays.append(buffer.getvalue())
            metas.append(json.dumps({"rows": rows, "failures": failures}))
        return {"chunk": batch["chunk"], "embeddings": np.array(arrays, dtype=object),
                "meta": np.array(metas, dtype=object)}
