"""A Ray reindex in its own process, for the kill test: ``python -m tests.reindex_ray_worker DB MODEL LOG``.

It joins the Ray cluster named by RAY_ADDRESS and appends ``upsert N COLLECTION`` to LOG before each
upsert returns; each upsert then waits a little, so the parent can kill it in the middle of the copy.
"""

from __future__ import annotations

import os
import sys
import time

from safeclip_sdk.integrations import open_store
from safeclip_sdk.index.reindex import reindex

WRITE_PAUSE = 0.3


def main(db: str, model: str, log_path: str) -> None:
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    store = open_store(db)
    upsert = store.upsert

    def logged_upsert(collection, points):
        upsert(collection, points)
        os.write(log, f"upsert {len(points)} {collection}\n".encode())
        time.sleep(WRITE_PAUSE)

    store.upsert = logged_upsert
    reindex(store, "docs", model, text_field="text", batch_size=16, num_ranges=4, progress=False, engine="ray")
    os.write(log, b"done\n")
    store.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
