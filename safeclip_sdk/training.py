"""``safeclip train``: Safe-CLIP fine-tuning from a base CLIP and a quadruplet dataset.

The run folder (``output_dir``) receives ``config.yaml`` (the effective config), checkpoints,
``train_log.jsonl``, ``report.json`` and, at the end, ``model/``: merged weights in safetensors,
the open_clip config, ``safeclip.json`` and a model card. ``model/`` loads back with
``safeclip_sdk.load_model(path)`` and with open_clip as ``local-dir:path``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import has_checkpoints
from .config import TrainConfig, load_config, save_config, to_dict, validate_config
from .distributed import DistributedContext, init_distributed, shutdown_distributed
from .errors import SafeclipError
from .models import LoadedModel, atomic_write_text, load_model, save_model_dir
from .devices import resolve_device
from .trainer import Trainer, TrainingProgress

logger = logging.getLogger(__name__)

# Settings that may differ between a run and its resumption; everything else must match. The run
# folder itself may have moved (or be named by another path), so output_dir is not compared.
RESUMABLE_CHANGES = {"resume", "output_dir", "epochs", "max_steps", "checkpoint_every", "log_every",
                     "early_stopping_patience", "data.num_workers"}
PATH_SETTINGS = {"base_model", "pretrained", "data.train", "data.val", "data.image_root", "data.unsafe_image_root"}


@dataclass
class TrainResult:
    model_dir: Path
    run_dir: Path
    progress: TrainingProgress
    report: dict[str, Any]


class SafeClipObjective:
    """Safe-CLIP's eight-term loss (methods.md section 1) as a trainer Objective."""

    def __init__(self, reference, loss, *, train_image_tower: bool):
        self.reference, self.loss_fn = reference, loss
        self.train_image_tower = train_image_tower

    def embed(self, encoder, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """T(t), T(t*) and, when the image tower trains, V(v) and V(v*) (if the data has them)."""
        safe_text, unsafe_text = batch["safe_text"], batch["unsafe_text"]
        safe_image, unsafe_image = batch["safe_image"], batch.get("unsafe_image")
        n = safe_text.shape[0]
        images = None
        if self.train_image_tower:
            images = safe_image if unsafe_image is None else torch.cat([safe_image, unsafe_image])
        image_features, text_features = encoder(images=images, texts=torch.cat([safe_text, unsafe_text]))
        features = {"text_safe": text_features[:n], "text_unsafe": text_features[n:]}
        if image_features is not None:
            features["image_safe"] = image_features[:n]
            if unsafe_image is not None:
                features["image_unsafe"] = image_features[n:]
        return features

    def fixed_features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """T0(t) and V0(v) from the frozen reference."""
        return {"ref_text_safe": self.reference.encode_text(batch["safe_text"]),
                "ref_image_safe": self.reference.encode_image(batch["safe_image"])}

    def loss(self, features: dict[str, torch.Tensor]):
        from .losses import SafeClipEmbeddings

        return self.loss_fn(SafeClipEmbeddings(**features))


def train(config: TrainConfig | str | Path | None = None, **overrides: Any) -> TrainResult:
    """Train Safe-CLIP; ``config`` is a TrainConfig or a YAML path, ``overrides`` dotted keys.

    >>> train("cfg.yaml", lr=1e-4, **{"lora.rank": 8})            # doctest: +SKIP
    """
    if not isinstance(config, TrainConfig):
        config = load_config(config, overrides)
    elif overrides:
        config = load_config(None, {**_flatten(to_dict(config)), **overrides})
    else:
        validate_config(config)
    if config.method != "safe-clip":
        raise SafeclipError(f"method '{config.method}' is not available yet (this version trains safe-clip)")
    device = resolve_device(config.device)
    context = init_distributed(device.type)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    try:
        return _train(config, device, context)
    finally:
        shutdown_distributed(context)


def _train(config: TrainConfig, device: torch.device, context: DistributedContext) -> TrainResult:
    from .data import QuadrupletDataset, load_dataset
    from .lora import DualEncoder, FrozenReference, apply_lora, merge_lora, trainable_parameter_count
    from .losses import SafeClipLoss

    started = time.time()
    run_dir = Path(config.output_dir)
    _prepare_run_dir(run_dir, config, context)

    train_set = load_dataset(config.data.train, image_root=config.data.image_root,
                             unsafe_image_root=config.data.unsafe_image_root, skip_bad=config.data.skip_bad)
    val_set = None
    if config.data.val:
        val_set = load_dataset(config.data.val, image_root=config.data.image_root,
                               unsafe_image_root=config.data.unsafe_image_root, skip_bad=config.data.skip_bad)
    with_unsafe_images = train_set.has_unsafe_images and config.lora.towers == "both"
    if not train_set.has_unsafe_images and context.is_main:
        logger.info("no unsafe images in %s: text-only mode (image-unsafe loss terms dropped)", config.data.train)

    torch.manual_seed(config.seed)
    base = load_model(config.base_model, config.pretrained, device=device)
    reference = FrozenReference(base.model).to(device)
    peft_model = apply_lora(base.model, config.lora)
    trainable, total = trainable_parameter_count(peft_model)
    if context.is_main:
        logger.info("LoRA: %d trainable parameters of %d (%.2f%%)", trainable, total, 100 * trainable / total)

    def dataset(split):
        return QuadrupletDataset(split.items, base.preprocess, base.tokenizer, with_unsafe_images=with_unsafe_images)

    objective = SafeClipObjective(reference, SafeClipLoss(config.loss), train_image_tower=config.lora.towers == "both")
    trainer = Trainer(DualEncoder(peft_model), objective, dataset(train_set), config, run_dir,
                      val_dataset=dataset(val_set) if val_set is not None else None, device=device,
                      context=context)
    if config.resume and not trainer.resume() and context.is_main:
        logger.info("no checkpoint in %s: starting from step 0", run_dir)
    progress = trainer.fit()
    trainer.restore_best()

    merged = merge_lora(peft_model)
    report = {
        "train_items": len(train_set), "val_items": len(val_set) if val_set else 0,
        "bad_rows": {"train": [vars(row) for row in train_set.bad_rows],
                     "val": [vars(row) for row in val_set.bad_rows] if val_set else []},
        "text_only": not with_unsafe_images, "steps": progress.step, "epochs_completed": progress.epoch,
        "stopped_early": progress.stopped_early, "best_step": progress.best_step,
        "history": progress.history, "trainable_parameters": trainable, "total_parameters": total,
        "seconds": round(time.time() - started, 1), "world_size": context.world_size,
    }
    model_dir = run_dir / "model"
    if context.is_main:
        _save_trained_model(model_dir, base, merged, config, report)
        atomic_write_text(run_dir / "report.json", _json(report))
    if context.enabled:
        torch.distributed.barrier()
    return TrainResult(model_dir, run_dir, progress, report)


def _prepare_run_dir(run_dir: Path, config: TrainConfig, context: DistributedContext) -> None:
    """Refuse to mix two runs in one folder; check that a resumed run keeps its settings."""
    saved_path = run_dir / "config.yaml"
    checkpointed = has_checkpoints(run_dir / "checkpoints")
    if checkpointed and not config.resume:
        raise SafeclipError(f"{run_dir} already holds a run; pass --resume to continue it "
                            f"or choose another output_dir")
    if (run_dir / "train_log.jsonl").is_file() and not checkpointed:
        if not config.resume:
            raise SafeclipError(f"{run_dir} holds a run that stopped before its first checkpoint; pass --resume "
                                f"to start it over (its train_log.jsonl is replaced) or choose another output_dir")
        if context.is_main:
            logger.warning("%s: the previous run stopped before its first checkpoint; starting over", run_dir)
    if config.resume and checkpointed and saved_path.is_file():
        saved = _flatten(to_dict(load_config(saved_path)))
        current = _flatten(to_dict(config))
        changed = sorted(key for key in current
                         if key not in RESUMABLE_CHANGES and not _same_setting(key, saved.get(key), current[key]))
        if changed:
            raise SafeclipError(f"cannot resume {run_dir}: '{changed[0]}' differs from the saved config "
                                f"({saved.get(changed[0])!r} -> {current[changed[0]]!r})")
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, saved_path)


def _same_setting(key: str, saved: Any, current: Any) -> bool:
    """Equal values; paths are equal when they name the same file (``data/x.jsonl`` and its absolute path)."""
    if saved == current:
        return True
    if key in PATH_SETTINGS and isinstance(saved, str) and isinstance(current, str):
        return Path(saved).expanduser().resolve() == Path(current).expanduser().resolve()
    return False


def _save_trained_model(model_dir: Path, base: LoadedModel, merged: torch.nn.Module, config: TrainConfig,
                        report: dict[str, Any]) -> None:
    from .model_card import render_model_card

    metadata = {
        "safeclip_version": __version__,
        "method": config.method,
        "base_model": {"source": config.base_model, "pretrained": config.pretrained},
        "data": {"train": config.data.train, "val": config.data.val, "train_items": report["train_items"],
                 "text_only": report["text_only"], "bad_rows_skipped": len(report["bad_rows"]["train"])},
        "config": to_dict(config),
        "metrics": {"steps": report["steps"], "best_step": report["best_step"],
                    "validation": report["history"][-1] if report["history"] else None},
    }
    save_model_dir(model_dir, merged, base.model_cfg, base.preprocess_cfg, metadata=metadata,
                   model_card=render_model_card(metadata))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "weights":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _json(values: dict[str, Any]) -> str:
    import json

    return json.dumps(values, indent=2, default=str)
