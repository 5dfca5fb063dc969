"""``safeclip train``: fine-tune a base CLIP with a registered safety method on quadruplets.

Every method runs through the same pipeline (the hooks are described in
:mod:`safeclip_sdk.methods.base`): load the data and the base model, add LoRA adapters, let the
method prepare, train with the shared :class:`~safeclip_sdk.training.loop.Trainer`, merge the
adapters, measure the model against its base on the validation split (the verdict, see
:mod:`safeclip_sdk.evaluation.verdict`) and save the model with the method's own keys and the
verdict in ``safeclip.json`` and its model card.

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

from .._utils.devices import resolve_device
from .._utils.files import atomic_write_text, staged_folder
from .._utils.version import __version__
from ..data.quadruplets import QuadrupletSet
from ..errors import SafeclipError
from ..evaluation.verdict import Verdict, judge
from ..model.folder import LoadedModel, load_model, save_model_dir
from .checkpoint import has_checkpoints
from .config import TrainConfig, load_config, save_config, to_dict, validate_config
from .ddp import DistributedContext, init_distributed, shutdown_distributed
from .loop import Trainer, TrainingProgress, autocast_dtype, micro_batch_size
from .model_card import render_model_card

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
    verdict: Verdict | None = None  # None on ranks other than the main one


def train(config: TrainConfig | str | Path | None = None, **overrides: Any) -> TrainResult:
    """Train the config's method; ``config`` is a TrainConfig or a YAML path, ``overrides`` dotted keys.

    >>> train("cfg.yaml", lr=1e-4, **{"lora.rank": 8})                                # doctest: +SKIP
    >>> train("cfg.yaml", method="safer-clip", **{"safer_clip.tau": 0.02})            # doctest: +SKIP
    """
    if not isinstance(config, TrainConfig):
        config = load_config(config, overrides)
    elif overrides:
        config = load_config(None, {**_flatten(to_dict(config), new_method=overrides.get("method")), **overrides})
    else:
        validate_config(config)
    device = resolve_device(config.device)
    context = init_distributed(device.type)
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    try:
        # the checks that need no model or data, before anything is loaded or written
        autocast_dtype(config.precision, device)
        micro_batch_size(config, context.world_size)
        return _train(config, device, context)
    finally:
        shutdown_distributed(context)


def _train(config: TrainConfig, device: torch.device, context: DistributedContext) -> TrainResult:
    from ..data import load_dataset
    from .lora import FrozenReference, apply_lora, merge_lora, trainable_parameter_count
    from ..model.towers import DualEncoder
    from ..methods import get_method
    from ..methods.base import TrainingRun

    started = time.time()
    method = get_method(config.method)(config)
    run_dir = Path(config.output_dir)
    _prepare_run_dir(run_dir, config, context,
                     resumable={f"{method.section}.{key}" for key in method.resumable_settings})

    train_set = load_dataset(config.data.train, image_root=config.data.image_root,
                             unsafe_image_root=config.data.unsafe_image_root, skip_bad=config.data.skip_bad)
    val_set = None
    if config.data.val:
        val_set = load_dataset(config.data.val, image_root=config.data.image_root,
                               unsafe_image_root=config.data.unsafe_image_root, skip_bad=config.data.skip_bad)
    with_unsafe_images = train_set.has_unsafe_images and config.lora.towers == "both"
    if not train_set.has_unsafe_images and context.is_main:
        logger.info("no unsafe images in %s: text-only mode (terms on unsafe images dropped)", config.data.train)

    torch.manual_seed(config.seed)
    base = load_model(config.base_model, config.pretrained, device=device)
    reference = FrozenReference(base.model).to(device) if method.uses_frozen_reference else None
    peft_model = apply_lora(base.model, config.lora)
    if context.is_main:  # every input read: the run folder is written from here on
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    trainable, total = trainable_parameter_count(peft_model)
    if context.is_main:
        logger.info("LoRA: %d trainable parameters of %d (%.2f%%)", trainable, total, 100 * trainable / total)

    run = TrainingRun(config=config, run_dir=run_dir, device=device, context=context, base=base,
                      train_set=train_set, val_set=val_set, with_unsafe_images=with_unsafe_images,
                      reference=reference)
    method.prepare(run)
    trainer = Trainer(DualEncoder(peft_model), method.objective(run), method.dataset(run, "train"), config, run_dir,
                      val_dataset=method.dataset(run, "val") if val_set is not None else None, device=device,
                      context=context, hooks=method)
    if config.resume and not trainer.resume() and context.is_main:
        logger.info("no checkpoint in %s: starting from step 0", run_dir)
    progress = trainer.fit()
    trainer.restore_best()

    merged = merge_lora(peft_model)
    report = {
        "method": config.method,
        "train_items": len(train_set), "val_items": len(val_set) if val_set else 0,
        "bad_rows": {"train": [vars(row) for row in train_set.bad_rows],
                     "val": [vars(row) for row in val_set.bad_rows] if val_set else []},
        "text_only": not with_unsafe_images, "steps": progress.step, "epochs_completed": progress.epoch,
        "stopped_early": progress.stopped_early, "best_step": progress.best_step,
        "history": progress.history, "trainable_parameters": trainable, "total_parameters": total,
        "seconds": round(time.time() - started, 1), "world_size": context.world_size,
    }
    model_dir = run_dir / "model"
    verdict = None
    if context.is_main:
        method_metadata = method.finish(run, merged)
        metadata = _model_metadata(config, base.pretrained, report, method_metadata)
        verdict = _verdict(config, base, merged, metadata, val_set or train_set, device, held_out=val_set is not None)
        metadata["verdict"] = report["verdict"] = verdict.to_dict()
        with staged_folder(model_dir) as stage:  # a model folder from an earlier run stays whole until then
            save_model_dir(stage, merged, base.model_cfg, base.preprocess_cfg, metadata=metadata,
                           model_card=render_model_card(metadata))
        atomic_write_text(run_dir / "report.json", _json(report))
        logger.info("verdict on %s:\n%s", verdict.data, verdict.table())
        if not verdict.safer:
            logger.warning("the model is %s", verdict.headline())
    if context.enabled:
        torch.distributed.barrier()
    if config.require_safer and verdict is not None and not verdict.safer:
        raise SafeclipError(f"{model_dir}: {verdict.headline()} (--require-safer; the model folder is kept)")
    return TrainResult(model_dir, run_dir, progress, report, verdict)


def _verdict(config: TrainConfig, base: LoadedModel, merged: torch.nn.Module, metadata: dict[str, Any],
             data: QuadrupletSet, device: torch.device, *, held_out: bool) -> Verdict:
    """The merged model against a freshly loaded base (LoRA changed ``base.model`` in place)."""
    model = LoadedModel(merged, base.model_cfg, base.preprocess_cfg, "trained model", None, metadata)
    original = load_model(config.base_model, config.pretrained, device=device)
    notes = [] if held_out else ["no validation split: measured on the TRAINING data, so the figures are optimistic"]
    batch_size = max(1, config.batch_size // config.grad_accum_steps)
    verdict = judge(model, original, data.items, data=str(data.path), device=device, batch_size=batch_size,
                    notes=notes)
    del original
    return verdict


def _prepare_run_dir(run_dir: Path, config: TrainConfig, context: DistributedContext,
                     resumable: set[str] = frozenset()) -> None:
    """Refuse to mix two runs in one folder; check that a resumed run keeps its settings (writes nothing)."""
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
                         if key not in RESUMABLE_CHANGES | resumable
                         and not _same_setting(key, saved.get(key), current[key]))
        if changed:
            raise SafeclipError(f"cannot resume {run_dir}: '{changed[0]}' differs from the saved config "
                                f"({saved.get(changed[0])!r} -> {current[changed[0]]!r})")


def _same_setting(key: str, saved: Any, current: Any) -> bool:
    """Equal values; paths are equal when they name the same file (``data/x.jsonl`` and its absolute path)."""
    if saved == current:
        return True
    if key in PATH_SETTINGS and isinstance(saved, str) and isinstance(current, str):
        return Path(saved).expanduser().resolve() == Path(current).expanduser().resolve()
    return False


def _model_metadata(config: TrainConfig, pretrained: str | None, report: dict[str, Any],
                    method_metadata: dict[str, Any]) -> dict[str, Any]:
    """``safeclip.json`` of the trained model (the verdict is added once measured)."""
    return {
        "safeclip_version": __version__,
        "method": config.method,
        # what was loaded: a model folder's own weights carry no pretrained tag, whatever the config says
        "base_model": {"source": config.base_model, "pretrained": pretrained},
        "data": {"train": config.data.train, "val": config.data.val, "train_items": report["train_items"],
                 "text_only": report["text_only"], "bad_rows_skipped": len(report["bad_rows"]["train"])},
        "config": to_dict(config),
        "metrics": {"steps": report["steps"], "best_step": report["best_step"],
                    "validation": report["history"][-1] if report["history"] else None},
        **method_metadata,
    }


def _flatten(values: dict[str, Any], prefix: str = "", new_method: str | None = None) -> dict[str, Any]:
    """Dotted keys of a nested config; with ``new_method`` (the method an override selects), without the
    section of the config's current method, whose settings do not apply to the new one."""
    if new_method is not None and new_method != values.get("method"):
        from ..methods import get_method

        section = get_method(values["method"]).section
        values = {key: value for key, value in values.items() if key != section}
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
