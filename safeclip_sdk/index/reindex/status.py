"""``safeclip reindex status``: where the alias points and where its last reindex stands, gate included."""

from __future__ import annotations

import os
from typing import Any

from ...integrations import open_store
from ...integrations.base import VectorStore
from . import state as st
from .gate import summary as gate_summary
from .plan import ReindexError


def status(store: str | os.PathLike | VectorStore, collection: str) -> dict[str, Any]:
    """The alias's collection and the last reindex job of ``collection``: phase, plan, counters,
    and the safety gate's decision with both audits' gated figures (None when it had no gate)."""
    given, store = store, open_store(store)
    try:
        job = st.read_job(store, collection)
        if job is None:
            raise ReindexError(f"'{collection}' on {store.name} has no safeclip reindex job")
        plan, gate = job["plan"], job.get("gate")
        return {"alias": collection, "serves": store.alias_target(collection), "phase": job["phase"],
                "source": plan["source"], "target": plan["target"], "mode": plan["mode"], "model": job["model"],
                "counters": job["counters"], "verification": job.get("verification"),
                "gate": None if gate is None else {
                    "settings": gate["settings"], "decision": gate.get("decision"),
                    "override": bool(gate.get("override")),
                    "summary": gate_summary(gate) if "decision" in gate else "gate not decided yet"}}
    finally:
        if store is not given:
            store.close()


def describe(found: dict[str, Any]) -> str:
    """The status as a few lines for a terminal."""
    lines = [f"'{found['alias']}' serves {found['serves']}",
             f"last reindex: {found['source']} -> {found['target']} ({found['mode']}), phase {found['phase']}, "
             f"model {found['model']}"]
    gate = found["gate"]
    lines.append("no gate" if gate is None else gate["summary"])
    return "\n".join(lines)
