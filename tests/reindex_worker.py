"""A reindex in its own process, for the kill tests:
``python -m tests.reindex_worker DB MODEL LOG BATCH [--new-version]``.

It appends one line per embedding call and per upsert to LOG (``embed N`` / ``upsert N``), written
with O_APPEND before the call returns, so the parent can count the work of runs it killed.
``--new-version`` passes ``new_version=True``: a follow-up reindex that builds the next version
with the same model and settings.
"""

from __future__ import annotations

import os
import sys

from safeclip_sdk.runtime.encoder import Encoder
from safeclip_sdk.integrations import open_store
from safeclip_sdk.index.reindex import reindex


def main(db: str, model: str, log_path: str, batch_size: str, *flags: str) -> None:
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    encoder = Encoder.load(model)
    encode_text = encoder.encode_text

    def logged_encode(texts, **kwargs):
        vectors = encode_text(texts, **kwargs)
        os.write(log, f"embed {len(vectors)}\n".encode())
        return vectors

    encoder.encode_text = logged_encode
    store = open_store(db)
    upsert = store.upsert

    def logged_upsert(collection, points):
        os.write(log, f"upsert {len(points)} {collection}\n".encode())
        upsert(collection, points)

    store.upsert = logged_upsert
    report = reindex(store, "docs", encoder=encoder, text_field="text", batch_size=int(batch_size), num_ranges=4,
                     new_version="--new-version" in flags, progress=False,
                     report=os.path.join(os.path.dirname(db), "report.json"))
    os.write(log, b"done\n")
    print(report.summary())
    store.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
