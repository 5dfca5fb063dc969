"""Embed a folder of images or a file of texts into .npy or .parquet, resumably.

The input list is fixed at the first run and stored in a hidden work folder beside the output
(``.OUTPUT.parts/``) together with one file per finished chunk. An interrupted run started again
with the same arguments skips the finished chunks; the output is assembled and renamed into place
at the end, and the work folder removed. Items that cannot be embedded (corrupt images, empty
texts) are listed in ``OUTPUT.failures.json`` and get no row; when every item fails, ``embed``
raises ``DataError`` (the CLI exits non-zero) and leaves ``OUTPUT`` as it was.

``OUTPUT.source.json`` records the input and model an output was made from: an existing output
made from others is replaced only when asked (``overwrite``), and only once the new one is complete.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from ..data.quadruplets import RowError, read_text_lines
from .encoder import Encoder
from ..errors import DataError
from ..data.images import IMAGE_EXTENSIONS
from .._utils.files import atomic_write, atomic_write_text
from .embed_chunks import (ItemId, chunk_array_path, chunk_meta_path, chunk_range, embed_image_chunk, embed_text_chunk,
                           save_chunk)

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = (".npy", ".parquet")
STATE_FILE = "state.json"
STATE_VERSION = 1



@dataclass
class EmbedReport:
    """What an ``embed`` run wrote."""

    output: Path
    kind: str
    count: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    ids_path: Path | None = None
    failures_path: Path | None = None
    chunks_total: int = 0
    chunks_reused: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        text = f"embedded {self.count} {self.kind}{'s' if self.count != 1 else ''} -> {self.output}"
        if self.failures:
            text += f"; {len(self.failures)} failed (listed in {self.failures_path})"
        if self.chunks_reused:
            text += f"; resumed: {self.chunks_reused}/{self.chunks_total} chunks were already done"
        return text


def embed(model: str | os.PathLike, inputs: str | os.PathLike, output: str | os.PathLike, *,
          kind: Literal["image", "text"] | None = None, backend: str = "torch", precision: str = "fp32",
          batch_size: int = 32, device: str = "auto", resume: bool = True, chunk_size: int = 1024,
          progress: bool = True, on_chunk_done: Callable[[int, int], None] | None = None, engine: str = "local",
          overwrite: bool = False, workers: int = 1, gpus_per_worker: float = 0, cpus_per_worker: float = 1,
          ray_address: str | None = None) -> EmbedReport:
    """Embed every image under a folder, or every text of a file, into one output file.

    Args:
        model: a model folder / model source (backend ``torch``) or an export folder.
        inputs: a folder of images (searched recursively; ids are paths relative to it), a text
            file (one text per line; ids are line numbers from 1) or a ``.jsonl`` file of
            ``{"id": ..., "text": ...}`` objects.
        output: ``.npy`` (ids go to ``OUTPUT.ids.json``) or ``.parquet`` (columns ``id`` and
            ``embedding``; needs pyarrow).
        kind: ``image`` or ``text``; by default a folder means images and a file means texts.
        resume: continue an interrupted run of the same job; ``False`` starts over.
        overwrite: replace an existing ``output`` made from another input or model (without it,
            that is refused before anything is written; the same input and model need no flag).
        chunk_size: items per saved chunk (the unit of resumption; a resumed run keeps the
            first run's).
        on_chunk_done: called as ``on_chunk_done(chunk_index, chunk_count)`` after each newly
            computed chunk is saved.
        engine: ``local`` (this process) or ``ray``: the pending chunks go through a Ray Data actor
            pool of ``workers`` actors, one Encoder each (``gpus_per_worker`` GPUs and
            ``cpus_per_worker`` CPUs each), on the cluster at ``ray_address`` (default:
            ``RAY_ADDRESS`` or a local Ray); this process saves the chunks, so only the inputs must
            be reachable from every worker. Needs ``[ray]``.

    Raises:
        DataError: bad inputs or output path, an output made from another input or model without
            ``overwrite``, or every item failed (``OUTPUT`` is then left as it was, and
            ``OUTPUT.failures.json`` lists the reasons).
    """
    started = time.perf_counter()
    output, inputs = Path(output), Path(inputs)
    if output.suffix not in OUTPUT_FORMATS:
        raise DataError(f"{output}: output must end in {' or '.join(OUTPUT_FORMATS)}")
    if output.suffix == ".parquet":
        _require_pyarrow()
    if chunk_size < 1:
        raise DataError(f"chunk_size must be at least 1, got {chunk_size}")
    if engine not in ("local", "ray"):
        raise DataError(f"unknown engine '{engine}' (choose from local, ray)")
    kind = _detect_kind(inputs, kind)
    settings = {"model": _model_identity(model), "backend": backend, "precision": precision,
                "kind": kind, "input": str(inputs.resolve())}
    if not overwrite:
        _check_made_from(output, settings)
    work = output.parent / f".{output.name}.parts"
    state = _load_or_start(work, settings, inputs, kind, chunk_size, resume)
    ids: list[ItemId] = state["ids"]
    chunk_size = state["chunk_size"]
    chunk_count = math.ceil(len(ids) / chunk_size)
    pending = [i for i in range(chunk_count) if not chunk_meta_path(work, i).is_file()]
    reused = chunk_count - len(pending)
    if pending and engine != "local":
        try:
            from .embed_ray import embed_chunks_ray

            embed_chunks_ray(model, inputs, work, state, kind, pending, progress, on_chunk_done,
                             encoder_options={"backend": backend, "device": device, "precision": precision,
                                              "batch_size": batch_size},
                             engine=engine, workers=workers, gpus_per_worker=gpus_per_worker,
                             cpus_per_worker=cpus_per_worker, address=ray_address)
        except BaseException:
            if not any(chunk_meta_path(work, i).is_file() for i in range(chunk_count)):
                shutil.rmtree(work)  # nothing done: leave no work folder in the way of the next run
            raise
    elif pending:
        try:
            encoder = Encoder.load(model, backend, device=device, precision=precision, batch_size=batch_size)
        except BaseException:
            if not reused:  # nothing done yet: leave no work folder in the way of the next run
                shutil.rmtree(work)
            raise
        _embed_chunks(encoder, inputs, work, state, kind, pending, progress, on_chunk_done)
    report = _assemble(work, output, ids, chunk_count, kind, settings)
    shutil.rmtree(work)
    report.chunks_total, report.chunks_reused = chunk_count, reused
    report.seconds = time.perf_counter() - started
    return report


def _embed_chunks(encoder: Encoder, inputs: Path, work: Path, state: dict[str, Any], kind: str,
                  pending: list[int], progress: bool, on_chunk_done: Callable[[int, int], None] | None) -> None:
    ids, chunk_size = state["ids"], state["chunk_size"]
    chunk_count = math.ceil(len(ids) / chunk_size)
    done_items = len(ids) - sum(len(chunk_range(i, chunk_size, len(ids))) for i in pending)
    with tqdm(total=len(ids), initial=done_items, unit=kind, desc="embed", disable=not progress) as bar:
        try:
            for index in pending:
                span = chunk_range(index, chunk_size, len(ids))
                if kind == "image":
                    embeddings, rows, failures = embed_image_chunk(encoder, inputs, ids, span)
                else:
                    embeddings, rows, failures = embed_text_chunk(encoder, ids, state["texts"], span)
                save_chunk(work, index, embeddings, rows, failures)
                bar.update(len(span))
                if on_chunk_done is not None:
                    on_chunk_done(index, chunk_count)
        except KeyboardInterrupt:
            finished = sum(chunk_meta_path(work, i).is_file() for i in range(chunk_count))
            logger.warning("interrupted with %d/%d chunks saved in %s; run the same command again to continue",
                           finished, chunk_count, work)
            raise


# --- inputs ---

def _detect_kind(inputs: Path, kind: str | None) -> str:
    if not inputs.exists():
        raise DataError(f"{inputs}: input not found")
    if kind not in (None, "image", "text"):
        raise DataError(f"unknown kind '{kind}' (choose image or text)")
    detected = "image" if inputs.is_dir() else "text"
    if kind is not None and kind != detected:
        expected = "a folder of images" if kind == "image" else "a text or .jsonl file"
        raise DataError(f"{inputs}: kind '{kind}' needs {expected}")
    if detected == "text" and inputs.suffix.lower() in IMAGE_EXTENSIONS:
        raise DataError(f"{inputs}: a single image file; pass the folder that holds the images")
    return detected


def list_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursive, hidden entries skipped), as sorted relative POSIX paths."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if (path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
                and not any(part.startswith(".") for part in relative.parts)):
            found.append(relative.as_posix())
    if not found:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
    return sorted(found)


def read_texts(path: Path) -> tuple[list[ItemId], list[str]]:
    """Ids and texts of a text file (ids = line numbers) or a ``.jsonl`` file ({"id", "text"})."""
    lines = []
    for source, line in read_text_lines(path):
        if isinstance(line, RowError):
            raise DataError(f"{source}: {line}")
        lines.append(line.rstrip("\r\n"))
    if path.suffix.lower() == ".jsonl":
        ids, texts = _parse_jsonl(path, lines)
    else:
        ids, texts = list(range(1, len(lines) + 1)), lines
    if not ids:
        raise DataError(f"{path}: no texts found")
    return ids, texts


def _parse_jsonl(path: Path, lines: list[str]) -> tuple[list[ItemId], list[str]]:
    ids: list[ItemId] = []
    texts: list[str] = []
    seen: dict[ItemId, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: invalid JSON ({error.msg})") from error
        if not isinstance(row, dict) or "id" not in row or "text" not in row:
            raise DataError(f"{where}: expected an object with 'id' and 'text'")
        item_id, text = row["id"], row["text"]
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
            raise DataError(f"{where}: 'id' must be a string or an integer, got {json.dumps(item_id)}")
        if ids and type(item_id) is not type(ids[0]):
            raise DataError(f"{where}: 'id' {json.dumps(item_id)} is a {type(item_id).__name__} but earlier "
                            f"ids are {type(ids[0]).__name__}s")
        if item_id in seen:
            raise DataError(f"{where}: duplicate id {json.dumps(item_id)} (first on line {seen[item_id]})")
        if not isinstance(text, str):
            raise DataError(f"{where}: 'text' must be a string")
        seen[item_id] = number
        ids.append(item_id)
        texts.append(text)
    return ids, texts


# --- the work folder ---

def _model_identity(model: str | os.PathLike) -> str:
    path = Path(os.fspath(model).removeprefix("local-dir:"))
    return str(path.resolve()) if path.exists() else os.fspath(model)


def _load_or_start(work: Path, settings: dict[str, str], inputs: Path, kind: str, chunk_size: int,
                   resume: bool) -> dict[str, Any]:
    state_path = work / STATE_FILE
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state.get("version") == STATE_VERSION and state["settings"] == settings:
            logger.info("resuming the unfinished run in %s", work)
            return state
        changed = sorted(key for key in settings if state.get("settings", {}).get(key) != settings[key])
        raise DataError(f"{work}: an unfinished run with different settings ({', '.join(changed) or 'version'}) "
                        f"is in the way; run again with --no-resume (resume=False) to start over")
    state: dict[str, Any] = {"version": STATE_VERSION, "settings": settings, "chunk_size": chunk_size}
    if kind == "image":
        state["ids"] = list_images(inputs)
    else:
        state["ids"], state["texts"] = read_texts(inputs)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    atomic_write_text(state_path, json.dumps(state))
    return state


# --- the output ---

def _source_record_path(output: Path) -> Path:
    return output.with_name(f"{output.name}.source.json")


def _check_made_from(output: Path, settings: dict[str, str]) -> None:
    """Refuse to replace an existing ``output`` unless its record names the same input and model."""
    if not output.exists():
        return
    record_path = _source_record_path(output)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        made_from = (record["input"], record["model"])
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{output} already exists and no {record_path.name} says what it was made from: pass "
                        f"--overwrite (overwrite=True) to replace it") from None
    if made_from == (settings["input"], settings["model"]):
        return
    wanted = [f"from {settings['input']}"] if made_from[0] != settings["input"] else []
    if made_from[1] != settings["model"]:
        wanted.append(f"with model {settings['model']}")
    raise DataError(f"{output} was made from {made_from[0]} with model {made_from[1]}, not {' '.join(wanted)}: "
                    f"pass --overwrite (overwrite=True) to replace it")


def _assemble(work: Path, output: Path, ids: list[ItemId], chunk_count: int, kind: str,
              settings: dict[str, str]) -> EmbedReport:
    metas = [json.loads(chunk_meta_path(work, i).read_text(encoding="utf-8")) for i in range(chunk_count)]
    row_ids = [ids[row] for meta in metas for row in meta["rows"]]
    failures = [failure for meta in metas for failure in meta["failures"]]
    arrays = (np.load(chunk_array_path(work, i), allow_pickle=False) for i in range(chunk_count))
    report = EmbedReport(output=output, kind=kind, count=len(row_ids), failures=failures)

    failures_path = output.with_name(f"{output.name}.failures.json")
    if failures:
        report.failures_path = failures_path
    if not row_ids:
        atomic_write_text(failures_path, json.dumps(failures, indent=1))
        shutil.rmtree(work)  # nothing to resume: every chunk is done, and every item failed
        first = failures[0]
        raise DataError(f"every one of the {len(failures)} {kind}s failed, so {output} was not written; "
                        f"the reasons are listed in {failures_path} (first: {first['id']}: {first['reason']})")
    if output.suffix == ".npy":
        report.ids_path = output.with_name(f"{output.name}.ids.json")

    def write(tmp: Path) -> None:
        if output.suffix == ".npy":
            _write_npy(tmp, arrays, len(row_ids))
        else:
            _write_parquet(tmp, arrays, row_ids)
        # the side files change only once the new output is complete, just before it is renamed in
        if failures:
            atomic_write_text(failures_path, json.dumps(failures, indent=1))
        else:
            failures_path.unlink(missing_ok=True)  # left over from an earlier output
        if report.ids_path is not None:
            atomic_write_text(report.ids_path, json.dumps(row_ids))
        atomic_write_text(_source_record_path(output), json.dumps(settings))

    atomic_write(output, write)
    return report


def _write_npy(path: Path, arrays, count: int) -> None:
    """Stream the chunks into one .npy file, never holding all embeddings in memory."""
    first = next(arrays)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, first.shape[1]))
    start = 0
    for array in (first, *arrays):
        out[start:start + len(array)] = array
        start += len(array)
    out.flush()
    del out


def _write_parquet(path: Path, arrays, row_ids: list[ItemId]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string() if row_ids and isinstance(row_ids[0], str) else pa.int64()),
                        ("embedding", pa.list_(pa.float32()))])
    start = 0
    with pq.ParquetWriter(path, schema) as writer:
        for array in arrays:
            count = len(array)
            offsets = pa.array(np.arange(count + 1, dtype=np.int32) * array.shape[1])
            embeddings = pa.ListArray.from_arrays(offsets, pa.array(array.reshape(-1), type=pa.float32()))
            ids = pa.array(row_ids[start:start + count], type=schema.field("id").type)
            writer.write_table(pa.table([ids, embeddings], schema=schema))
            start += count


def _require_pyarrow() -> None:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError as error:
        raise DataError("writing .parquet needs pyarrow: pip install 'safeclip[parquet]' "
                        "(or write .npy instead)") from error
