"""A gated reindex in its own process, for the kill test:
``python -m tests.reindex_gate_worker DB MODEL BASE PROBES LOG``.

Each audit the gate starts appends ``audit`` to LOG and then takes a while (a real audit of a large
probe set does), so the parent can kill the process while the gate is running.
"""

from __future__ import annotations

import os
import sys
import time

import safeclip_sdk.index.reindex.gate as gate
from safeclip_sdk.index.reindex import reindex


def main(db: str, model: str, base: str, probes: str, log_path: str) -> None:
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    audit_collection = gate.audit_collection

    def slow_audit(*args, **kwargs):
        os.write(log, b"audit\n")
        time.sleep(5)
        return audit_collection(*args, **kwargs)

    gate.audit_collection = slow_audit
    reindex(db, "docs", model, text_field="text", gate=probes, base_model=base, progress=False, report=None)
    os.write(log, b"done\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
