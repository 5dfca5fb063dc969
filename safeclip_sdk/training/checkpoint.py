"""Training checkpoints: written to a temporary folder and renamed, never pickled objects.

A checkpoint folder holds ``trainable.safetensors`` (the parameters being trained),
``training_state.pt`` (optimizer, scheduler, grad-scaler and random-number states: plain tensors
and numbers, loaded with ``torch.load(weights_only=True)``) and ``state.json`` (progress).
``checkpoints/latest`` names the newest complete checkpoint; when it names one that is gone or
damaged, resuming falls back to the newest checkpoint that still loads.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import SafeclipError
from .._utils.files import atomic_write_text

LATEST = "latest"
CHECKPOINT_FILES = ("trainable.safetensors", "training_state.pt", "state.json")
_STEP_NAME = re.compile(r"step-\d+")


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(checkpoint_dir: Path, step: int, trainable: dict[str, torch.Tensor],
                    training_state: dict[str, Any], progress: dict[str, Any], keep: int = 2) -> Path:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"step-{step:08d}"
    tmp = checkpoint_dir / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in trainable.items()},
              str(tmp / "trainable.safetensors"))
    torch.save(training_state, tmp / "training_state.pt")
    (tmp / "state.json").write_text(json.dumps(progress, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_text(checkpoint_dir / LATEST, final.name)
    _prune(checkpoint_dir, keep)
    return final


def _prune(checkpoint_dir: Path, keep: int) -> None:
    for old in sorted(checkpoint_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def resume_candidates(checkpoint_dir: Path) -> list[Path]:
    """Checkpoint folders to resume from, in order: the one ``latest`` names, then the others
    newest first (a fallback for when ``latest`` names a deleted or damaged checkpoint)."""
    named = None
    pointer = checkpoint_dir / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        named = checkpoint_dir / name if _STEP_NAME.fullmatch(name) else None
    others = sorted((path for path in checkpoint_dir.glob("step-*") if _STEP_NAME.fullmatch(path.name)
                     and path.is_dir() and path != named), reverse=True)
    return ([named] if named is not None else []) + others


def has_checkpoints(checkpoint_dir: Path) -> bool:
    """Whether a run folder's checkpoint folder holds anything a run left behind."""
    return (checkpoint_dir / LATEST).is_file() or any(checkpoint_dir.glob("step-*"))


def load_checkpoint(path: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
    """(trainable tensors, training state, progress) of a checkpoint folder."""
    if not path.is_dir():
        raise SafeclipError(f"{path}: checkpoint is missing")
    missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
    if missing:
        raise SafeclipError(f"{path}: incomplete checkpoint ({missing[0]} is missing)")
    try:
        trainable = load_file(str(path / "trainable.safetensors"), device=str(device))
        # optimizer.load_state_dict moves its tensors to the parameters' device; RNG states must stay on CPU
        training_state = torch.load(path / "training_state.pt", map_location="cpu", weights_only=True)
        progress = json.loads((path / "state.json").read_text())
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SafeclipError(f"{path}: unreadable checkpoint ({reason})") from None
    if not isinstance(progress, dict) or not isinstance(training_state, dict):
        raise SafeclipError(f"{path}: unreadable checkpoint (unexpected content)")
    return trainable, training_state, progress
