"""SafeR-CLIP's proximity targets: the nearest safe caption of the training pool for each unsafe one.

Instead of one fixed safe counterpart per unsafe item, SafeR-CLIP redirects each unsafe caption
towards the safe caption of the whole training pool that the FROZEN text encoder finds closest
(cosine top-1); that caption's paired image is the image target. The pass runs once, before
training, and is cached beside the run.

Memory stays bounded for a pool of any size: the safe pool is embedded once (``N x D``), the
unsafe captions are embedded and matched batch by batch, and each batch is compared with the
pool block by block while a running top-1 is kept, so no ``N x N`` (or ``batch x N``) matrix is
ever built.

The cache is two ``.npy`` arrays (target indices, similarities) and a JSON file with the key they
were computed under: a hash of the captions and a fingerprint of the encoder's weights. A second
call with the same captions and weights reads them back; any change recomputes them. While the
pass runs, finished chunks (pool embeddings, targets) are kept as ``.npy`` files in
``proximity_targets.partial/`` beside the cache, so a killed pass resumes; the folder is removed
once the cache is written (it holds the pool embeddings meanwhile: ``N x D`` fp32 on disk).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...errors import SafeclipError
from ..._utils.files import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_NAME = "proximity_targets"

EmbedTexts = Callable[[list[str]], "Tensor | np.ndarray"]


@dataclass(frozen=True)
class ProximityTargets:
    """For unsafe caption ``i``: ``indices[i]`` is its target in the safe pool (the caption and
    its paired image), ``similarities[i]`` the cosine between the two under the frozen encoder."""

    indices: np.ndarray       # [M] int64
    similarities: np.ndarray  # [M] float32
    from_cache: bool = False


def captions_fingerprint(unsafe_captions: Sequence[str], safe_captions: Sequence[str]) -> str:
    """A sha256 of both caption lists, in order (lengths included, so no two lists collide)."""
    digest = hashlib.sha256()
    for name, captions in (("unsafe", unsafe_captions), ("safe", safe_captions)):
        digest.update(f"{name}:{len(captions)}\n".encode())
        for caption in captions:
            encoded = caption.encode("utf-8")
            digest.update(f"{len(encoded)}:".encode())
            digest.update(encoded)
    return digest.hexdigest()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A sha256 of a module's state dict: every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def nearest_safe_captions(unsafe_captions: Sequence[str], safe_captions: Sequence[str],
                          embed_texts: EmbedTexts, *, model_fingerprint: str | None = None,
                          cache_dir: str | os.PathLike | None = None, batch_size: int = 256,
                          pool_block: int = 16384, chunk_size: int = 16384,
                          progress: bool = True) -> ProximityTargets:
    """The proximity target of every unsafe caption: the index of the most similar safe caption.

    ``embed_texts`` maps a list of at most ``batch_size`` captions to their embeddings
    ``[n, D]`` (a tensor or array, normalised here) with the FROZEN text encoder; it is called
    under ``torch.no_grad()``. With ``cache_dir``, the result is cached there, keyed by the
    captions and ``model_fingerprint`` (required then; :func:`weights_fingerprint` makes one),
    and the work is saved every ``chunk_size`` captions, so a killed pass resumes where it
    stopped. Equal similarities go to the lowest pool index, whatever the block sizes.
    """
    unsafe_captions, safe_captions = list(unsafe_captions), list(safe_captions)
    _check_captions("unsafe_captions", unsafe_captions)
    _check_captions("safe_captions", safe_captions)
    for name, value in (("batch_size", batch_size), ("pool_block", pool_block), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SafeclipError(f"proximity targets: {name} must be a positive integer, got {value!r}")
    partial = None
    if cache_dir is not None:
        if not model_fingerprint:
            raise SafeclipError("proximity targets: caching needs a model_fingerprint "
                                "(weights_fingerprint(text_encoder) makes one)")
        key = _cache_key(captions_fingerprint(unsafe_captions, safe_captions), model_fingerprint)
        cached = _read_cache(Path(cache_dir), key, len(unsafe_captions), len(safe_captions))
        if cached is not None:
            logger.info("proximity targets: reusing the cache in %s", cache_dir)
            return cached
        partial = _PartialWork(Path(cache_dir) / f"{CACHE_NAME}.partial", key)

    with torch.no_grad():
        pool = _embed_pool(safe_captions, embed_texts, batch_size, chunk_size, partial, progress)
        indices = np.empty(len(unsafe_captions), dtype=np.int64)
        similarities = np.empty(len(unsafe_captions), dtype=np.float32)
        with tqdm(total=len(unsafe_captions), desc="nearest safe caption", unit="caption",
                  disable=not progress) as bar:
            for chunk, begin in enumerate(range(0, len(unsafe_captions), chunk_size)):
                end = min(begin + chunk_size, len(unsafe_captions))
                done = partial.load(f"targets-{chunk:05d}", end - begin, 2) if partial is not None else None
                if done is not None and not np.all((done[:, 0] >= 0) & (done[:, 0] < len(safe_captions))):
                    done = None
                if done is None:
                    for start in range(begin, end, batch_size):
                        batch = unsafe_captions[start:min(start + batch_size, end)]
                        queries = _embedded(batch, embed_texts, "unsafe", start, pool.shape[1], pool.device)
                        best, where = running_top1(queries, pool, pool_block)
                        indices[start:start + len(batch)] = where.cpu().numpy()
                        similarities[start:start + len(batch)] = best.cpu().numpy()
                        bar.update(len(batch))
                    if partial is not None:
                        partial.save(f"targets-{chunk:05d}", np.stack(
                            [indices[begin:end].astype(np.float64), similarities[begin:end]], axis=1))
                else:
                    indices[begin:end] = done[:, 0].astype(np.int64)
                    similarities[begin:end] = done[:, 1]
                    bar.update(end - begin)
    targets = ProximityTargets(indices=indices, similarities=similarities)
    if partial is not None:
        _write_cache(Path(cache_dir), key, targets, len(safe_captions))
        partial.remove()
    return targets


def running_top1(queries: Tensor, pool: Tensor, pool_block: int) -> tuple[Tensor, Tensor]:
    """Largest ``queries @ pool.T`` entry of each query row and its column, pool block by block.

    Memory is ``len(queries) x pool_block``; ties go to the lowest column.
    """
    best = torch.full((queries.shape[0],), -torch.inf, dtype=queries.dtype, device=queries.device)
    where = torch.zeros(queries.shape[0], dtype=torch.int64, device=queries.device)
    for start in range(0, pool.shape[0], pool_block):
        values, columns = (queries @ pool[start:start + pool_block].T).max(dim=1)
        better = values > best  # strict: an earlier block keeps a tie
        best = torch.where(better, values, best)
        where = torch.where(better, columns + start, where)
    return best, where


def _check_captions(name: str, captions: list) -> None:
    if not captions:
        raise SafeclipError(f"proximity targets: {name} is empty")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise SafeclipError(f"proximity targets: {name}[{i}] is a {type(caption).__name__}, not a string")


def _embedded(texts: list[str], embed_texts: EmbedTexts, kind: str, offset: int, dim: int | None,
              device: torch.device | None) -> Tensor:
    """``embed_texts(texts)`` as L2-normalised fp32 rows, with the caller's mistakes named."""
    out = torch.as_tensor(embed_texts(texts))
    if device is not None:
        out = out.to(device)
    if out.ndim != 2 or out.shape[0] != len(texts) or (dim is not None and out.shape[1] != dim):
        expected = f"[{len(texts)}, {dim if dim is not None else 'D'}]"
        raise SafeclipError(f"proximity targets: embed_texts returned shape {tuple(out.shape)} for {kind} "
                            f"captions {offset}..{offset + len(texts) - 1}, expected {expected}")
    out = out.float()
    bad = torch.nonzero(~torch.isfinite(out).all(dim=1))
    if len(bad):
        raise SafeclipError(f"proximity targets: the embedding of {kind} caption {offset + int(bad[0])} is not finite")
    return torch.nn.functional.normalize(out, dim=1)


def _embed_pool(texts: list[str], embed_texts: EmbedTexts, batch_size: int, chunk_size: int,
                partial: _PartialWork | None, progress: bool) -> Tensor:
    """The safe pool as ``[N, D]`` unit rows, on the device the embeddings come on."""
    chunks: list[Tensor] = []
    fresh_device = None
    with tqdm(total=len(texts), desc="embedding the safe pool", unit="caption", disable=not progress) as bar:
        for chunk, begin in enumerate(range(0, len(texts), chunk_size)):
            end = min(begin + chunk_size, len(texts))
            dim = chunks[0].shape[1] if chunks else None
            done = partial.load(f"pool-{chunk:05d}", end - begin, dim) if partial is not None else None
            if done is not None:
                chunks.append(torch.from_numpy(done))
                bar.update(end - begin)
                continue
            parts = []
            for start in range(begin, end, batch_size):
                batch = texts[start:min(start + batch_size, end)]
                parts.append(_embedded(batch, embed_texts, "safe", start, dim, fresh_device))
                dim, fresh_device = parts[-1].shape[1], parts[-1].device
                bar.update(len(batch))
            chunks.append(torch.cat(parts))
            if partial is not None:
                partial.save(f"pool-{chunk:05d}", chunks[-1].cpu().numpy())
    device = fresh_device or torch.device("cpu")
    return torch.cat([chunk.to(device) for chunk in chunks])


class _PartialWork:
    """Finished chunks of a pass as ``.npy`` files; a folder left by other data or weights is wiped.

    Target chunks are ``[n, 2]`` float64 rows of (pool index, similarity): exact for both.
    """

    def __init__(self, folder: Path, key: str):
        self.folder = folder
        key_path = folder / "key.json"
        if folder.is_dir():
            try:
                same = json.loads(key_path.read_text(encoding="utf-8")).get("key") == key
            except (OSError, ValueError):
                same = False
            if not same:
                self.remove()
        if not folder.is_dir():
            folder.mkdir(parents=True)
            atomic_write_text(key_path, json.dumps({"key": key}))
        elif any(folder.glob("*.npy")):
            logger.info("proximity targets: resuming the pass saved in %s", folder)

    def load(self, name: str, rows: int, dim: int | None = None) -> np.ndarray | None:
        path = self.folder / f"{name}.npy"
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        if array.ndim != 2 or array.shape[0] != rows or (dim is not None and array.shape[1] != dim):
            return None
        return array

    def save(self, name: str, array: np.ndarray) -> None:
        atomic_write(self.folder / f"{name}.npy", lambda tmp: _save_npy(tmp, array))

    def remove(self) -> None:
        for path in self.folder.iterdir():
            path.unlink()
        self.folder.rmdir()


def _cache_key(data_hash: str, model_fingerprint: str) -> str:
    return hashlib.sha256(f"v{CACHE_VERSION}:{data_hash}:{model_fingerprint}".encode()).hexdigest()


def _cache_paths(folder: Path) -> tuple[Path, Path, Path]:
    return (folder / f"{CACHE_NAME}.json", folder / f"{CACHE_NAME}.indices.npy",
            folder / f"{CACHE_NAME}.similarities.npy")


def _read_cache(folder: Path, key: str, count: int, pool_size: int) -> ProximityTargets | None:
    meta_path, indices_path, similarities_path = _cache_paths(folder)
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("key") != key:
            logger.info("proximity targets: the cache in %s is for other data or weights; recomputing", folder)
            return None
        indices = np.load(indices_path, allow_pickle=False)
        similarities = np.load(similarities_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        logger.warning("proximity targets: unreadable cache in %s (%s); recomputing", folder, exc)
        return None
    if (indices.shape != (count,) or similarities.shape != (count,) or indices.dtype != np.int64
            or (count and (indices.min() < 0 or indices.max() >= pool_size))):
        logger.warning("proximity targets: the cache in %s does not fit the data; recomputing", folder)
        return None
    return ProximityTargets(indices=indices, similarities=similarities.astype(np.float32), from_cache=True)


def _write_cache(folder: Path, key: str, targets: ProximityTargets, pool_size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta_path, indices_path, similarities_path = _cache_paths(folder)
    meta_path.unlink(missing_ok=True)  # the old key must not vouch for half-written arrays
    for path, array in ((indices_path, targets.indices), (similarities_path, targets.similarities)):
        atomic_write(path, lambda tmp, array=array: _save_npy(tmp, array))
    # written last: a cache whose JSON names this key is complete
    atomic_write_text(meta_path, json.dumps({
        "version": CACHE_VERSION, "key": key, "count": len(targets.indices), "pool_size": pool_size,
        "indices": indices_path.name, "similarities": similarities_path.name}, indent=2))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
