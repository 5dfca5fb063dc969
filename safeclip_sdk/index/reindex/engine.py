"""The reindex job: create, copy, reconcile, verify, gate, switch, reconcile once more, done.

Each phase ends by writing the job state to the database, and each phase can be run again after a
kill: the copy continues from its range cursors, the reconciliation passes and the switch are
idempotent, and the pass after the switch reads its base back from the database.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ...integrations.base import VectorStore
from ..contract import index_key
from . import state as st
from .pipeline import Built, PointBuilder, copy_range
from .plan import Plan, ReindexError, same_model, split_ranges, versions
from ..contract import ERROR_FIELD
from .gate import GateFailed, run_gate, summary as gate_summary
from .reconcile import final_pass, payload_hash, reconcile_pass
from .verify import verify_sample

logger = logging.getLogger(__name__)

ABANDONED = "abandoned"
MAX_PASSES = 4
VERIFY_SAMPLE = 32


@dataclass
class ReindexReport:
    """What a reindex did (or, with ``dry_run``, would do: ``plan``). ``failures`` lists points whose
    source could not be read."""

    alias: str
    source: str
    target: str
    mode: str
    points: int = 0
    embedded: int = 0
    kept: int = 0
    skipped: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    passes: list[dict[str, Any]] = field(default_factory=list)
    after_switch: dict[str, Any] | None = None
    verification: dict[str, Any] | None = None
    adopted: bool = False
    dropped_old: bool = False
    resumed: bool = False
    embedded_this_run: int = 0
    seconds: float = 0.0
    report_path: str | None = None
    dry_run: bool = False
    plan: dict[str, Any] | None = None  # a dry run's plan and estimate (see ``dryrun.py``)
    already_done: bool = False  # the alias already served this model's version: nothing was written
    gate: dict[str, Any] | None = None  # the safety gate: settings, both audits, the decision (gate.py)

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()}

    def summary(self) -> str:
        if self.already_done:
            return (f"already done: '{self.alias}' serves {self.target} ({self.mode}, {self.points} points), "
                    f"reindexed with this model and these settings; nothing written (--new-version builds another)")
        if self.dry_run:
            return json.dumps(self.plan, indent=2, default=str)
        lines = [f"reindexed '{self.alias}': {self.source} -> {self.target} ({self.mode}), {self.points} points, "
                 f"{self.embedded} re-embedded in {self.seconds:.1f} s"]
        if self.adopted:
            lines.append(f"adopted: '{self.alias}' is now an alias (the plain collection was copied first)")
        if self.failures:
            what = (f"{self.kept} kept their old vectors (payload flag '{ERROR_FIELD}')" if self.kept
                    else f"{self.skipped} left out")
            lines.append(f"{len(self.failures)} sources could not be read: {what}")
            for failure in self.failures[:5]:
                lines.append(f"  {failure['id']!r}: {failure['reason']}")
            if len(self.failures) > 5:
                lines.append(f"  ... {len(self.failures) - 5} more")
        if self.gate and "decision" in self.gate:
            lines.append(gate_summary(self.gate))
        if self.report_path:
            lines.append(f"report: {self.report_path}")
        lines.append(f"old collection {self.source} " + ("dropped" if self.dropped_old else
                     "kept (safeclip reindex rollback / cleanup)"))
        return "\n".join(lines)


class Job:
    """One reindex (or adoption copy) of ``plan``, driven phase by phase from its stored state."""

    def __init__(self, store: VectorStore, job: dict[str, Any], builder: PointBuilder, *, max_passes: int,
                 verify_samples: int, progress: bool):
        self.store, self.job, self.builder = store, job, builder
        self.plan: Plan = builder.plan
        self.max_passes, self.verify_samples, self.progress = max_passes, verify_samples, progress
        self.failures = st.read_failures(store, self.plan.alias)
        self.embedded_this_run = 0

    @property
    def phase(self) -> str:
        return self.job["phase"]

    def save(self, phase: str | None = None) -> None:
        if phase:
            self.job["phase"] = phase
        st.write_job(self.store, self.job)

    def run(self) -> None:
        plan, store = self.plan, self.store
        if self.phase == st.CREATE:
            if not store.collection_exists(plan.target):
                store.create_collection(plan.target, plan.target_specs, like=plan.source)
            self.save(st.COPY)
        if self.phase == st.COPY:
            self._copy()
            store.finish_load(plan.target)  # e.g. PostgreSQL's HNSW index, built once the bulk copy is in
            self.save(st.RECONCILE)
        if self.phase == st.RECONCILE:
            base = self._reconcile()
            if not plan.adopt:
                self.job["base_chunks"] = st.write_base(store, plan.alias, *base)
            self.save(st.GATE if self.job.get("gate") else st.SWITCH)
        if self.phase == st.GATE:
            self._gate()
            self.save(st.SWITCH)
        if self.phase == st.SWITCH:
            self._switch()
            self.save(st.FINAL)
        if self.phase == st.FINAL:
            if not plan.adopt:
                self._final()
                self._write_index_info()
                st.delete_base(store, plan.alias, self.job.get("base_chunks", 0))
            self.job["finished"] = time.time()
            self.save(st.DONE)

    # --- phases ---

    def _copy(self) -> None:
        counters = self.job["counters"]
        total = self.store.count(self.plan.source)
        with self._bar("copy", total, initial=min(total, counters["copied"] + counters["skipped"])) as bar:
            for span in self.job["ranges"]:
                if span["done"]:
                    continue

                def commit(built: Built, next_cursor, finished, span=span):
                    self._absorb(built)
                    counters["copied"] += len(built.points)
                    span["cursor"], span["done"] = next_cursor, finished
                    self.save()
                    bar.update(len(built.points) + built.skipped)

                copy_range(self.store, self.plan, span, self.builder, commit)

    def _reconcile(self):
        counters = self.job["counters"]
        total = self.store.count(self.plan.source)
        for number in range(1, self.max_passes + 1):
            with self._bar(f"reconcile {number}", total) as bar:
                result, keys, hashes = reconcile_pass(self.store, self.plan, self.builder, self.failures,
                                                      self._absorb, sample_size=self.verify_samples, progress=bar)
            counters["repaired"] += result.missing + result.changed
            counters["deleted"] += result.extra
            self.job["passes"].append(result.to_dict())
            self.save()
            if not result.differences:
                break
        if not result.differences and result.new_count != result.compared - result.expected_absent:
            raise ReindexError(f"verification of '{self.plan.target}' failed: {result.new_count} points where "
                               f"{result.compared - result.expected_absent} were expected")
        self.job["verification"] = verify_sample(self.store, self.plan, self.builder, result.sample).to_dict()
        return keys, hashes

    def _switch(self) -> None:
        plan, store = self.plan, self.store
        if store.alias_target(plan.alias) != plan.target:
            if plan.adopt and store.collection_exists(plan.alias):
                # the one moment of the adoption where the name resolves to nothing (docs/reindex.md)
                store.drop_collection(plan.alias)
            store.switch_alias(plan.alias, plan.target)
            logger.info("'%s' now points at %s", plan.alias, plan.target)
        st.record_history(self.job, "adopt" if plan.adopt else "reindex", plan.target,
                          None if plan.adopt else plan.source)

    def _final(self) -> None:
        keys, hashes = st.read_base(self.store, self.plan.alias, self.job["base_chunks"])
        with self._bar("after switch", self.store.count(self.plan.source)) as bar:
            result = final_pass(self.store, self.plan, self.builder, self.failures, keys, hashes, self._absorb,
                                progress=bar)
        counters = self.job["counters"]
        counters["carried_after_switch"] += result.carried
        counters["completed_after_switch"] += result.completed
        self.job["after_switch"] = result.after_switch_dict()
        self.save()

    def _gate(self) -> None:
        """Audit the old and the new collection and switch only if the new one is no less safe (a
        decision already taken is kept: a rerun after a kill during the audits takes it again)."""
        gate, plan = self.job["gate"], self.plan
        if "decision" not in gate:
            self._write_index_info()  # the new collection's record: how the audit (and readers) search it
            gate.update(run_gate(self.store, plan.source, plan.target, self.builder.encoder, self.job["model"],
                                 gate["settings"]))
            self.save()
            self._write_index_info()  # now with both audits and the decision
        if not gate["decision"]["passed"] and not gate.get("override"):
            raise GateFailed(f"gate failed, '{plan.alias}' still serves {plan.source}: {gate['decision']['failed']}; "
                             f"{plan.target} is kept (safeclip reindex status; --resume-switch switches anyway)")

    def _write_index_info(self) -> None:
        plan = self.plan
        gate = {"gate": self.job["gate"]} if self.job.get("gate") else {}
        self.store.write_state(index_key(plan.target), {
            "mode": plan.mode, "model": self.job["model"], "space": self.job["space"],
            "vectors": {name: plan.safe_names[name] for name in plan.kinds},
            "score_field": plan.score_field, "threshold": self._score_threshold(), **plan.category_record(), **gate})

    def _score_threshold(self) -> float | None:
        """The calibrated threshold of a model's own unsafe score (its method's classifier), for
        ``max_score`` filters; the shift score has none until one is calibrated on labelled data."""
        if not self.plan.score_field:
            return None
        kind = next(iter(self.plan.kinds.values()), "image")
        return self.builder.encoder.inference.calibrated_threshold(kind)

    # --- bookkeeping ---

    def _absorb(self, built: Built) -> None:
        """Count a written page and remember its failures (in the database, for the report)."""
        counters = self.job["counters"]
        counters["embedded"] += built.embedded
        counters["kept"] += built.kept
        counters["skipped"] += built.skipped
        self.embedded_this_run += built.embedded + built.kept
        reserved = self.plan.reserved_fields()
        changed = False
        for point, reason in built.failures:
            self.failures[st.failure_key(point.id)] = {"id": point.id, "reason": reason,
                                                       "hash": str(payload_hash(point.payload, reserved))}
            changed = True
        for point in built.points:
            if ERROR_FIELD not in point.payload and self.failures.pop(st.failure_key(point.id), None):
                changed = True
        if changed:
            st.write_failures(self.store, self.plan.alias, self.failures)

    def _bar(self, phase: str, total: int, initial: int = 0):
        return tqdm(total=total, initial=initial, desc=f"{phase} {self.plan.target}", unit="pt",
                    disable=not self.progress, dynamic_ncols=True)


def start_job(store: VectorStore, plan: Plan, model: str, probe: list[float], space: dict[str, Any],
              settings: dict[str, Any], previous: dict[str, Any] | None, num_ranges: int,
              gate: dict[str, Any] | None = None) -> dict[str, Any]:
    """A new job state for ``plan``, with its id ranges, written to the database; it carries the
    alias's history and the layouts of the earlier versions that still exist from ``previous``.
    ``gate``: the safety gate's settings (see gate.py), when the switch is gated."""
    ranges = split_ranges(store, plan.source, store.count(plan.source), num_ranges)
    job = st.new_job(plan.to_dict(), probe, model, ranges, st.carried_over(previous, store.collection_exists))
    job["space"], job["settings"] = space, settings
    if gate is not None:
        job["gate"] = {"settings": gate}
    st.write_failures(store, plan.alias, {})
    st.write_job(store, job)
    return job


def next_version(store: VectorStore, alias: str, history: list[dict[str, Any]]) -> int:
    used = set(versions(store, alias))
    for entry in history:
        for name in (entry.get("collection"), entry.get("previous")):
            if name and name.startswith(f"{alias}-safeclip-v") and name.rsplit("v", 1)[1].isdigit():
                used.add(int(name.rsplit("v", 1)[1]))
    return max(used, default=0) + 1


def check_resumable(job: dict[str, Any], settings: dict[str, Any], probe: list[float]) -> None:
    """Refuse to continue an unfinished job with other settings or another model."""
    alias = job["plan"]["alias"]
    saved = job.get("settings", {})
    # a setting newer than the job is absent from it; left off, it changes nothing
    changed = sorted(key for key in settings
                     if (saved[key] != settings[key] if key in saved else settings[key] not in (None, False)))
    if changed:
        raise ReindexError(f"an unfinished reindex of '{alias}' (phase {job['phase']}) used other settings "
                           f"({', '.join(changed)}): rerun it with the same options, or run "
                           f"'safeclip reindex cleanup' to abandon it")
    if not same_model(job["probe"], probe):
        raise ReindexError(f"an unfinished reindex of '{alias}' (phase {job['phase']}) used another model "
                           f"({job['model']}): rerun it with that model, or run 'safeclip reindex cleanup'")


def is_active(job: dict[str, Any] | None) -> bool:
    return job is not None and job["phase"] not in (st.DONE, ABANDONED)


def write_report(report: ReindexReport, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    report.report_path = str(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def report_of(store: VectorStore, job: dict[str, Any], failures: dict[str, dict[str, Any]]) -> ReindexReport:
    plan, counters = job["plan"], job["counters"]
    return ReindexReport(
        alias=plan["alias"], source=plan["source"], target=plan["target"], mode=plan["mode"],
        points=store.count(plan["target"]), embedded=counters["embedded"], kept=counters["kept"],
        skipped=counters["skipped"], failures=[{"id": f["id"], "reason": f["reason"]} for f in failures.values()],
        passes=job["passes"], after_switch=job.get("after_switch"), verification=job.get("verification"),
        gate=job.get("gate"))

