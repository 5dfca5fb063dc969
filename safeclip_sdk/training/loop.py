"""The training loop shared by every method.

What it guarantees (each one is a test in tests/test_trainer.py):
- gradient accumulation is exact, contrastive terms included: ``grad_accum_steps`` micro-batches
  give the gradient of one batch of their combined size (one extra forward per micro-batch;
  under DDP, only the last backward syncs);
- checkpoints every ``checkpoint_every`` steps are written atomically, and ``resume`` continues
  with the same data order, optimizer and random state, ending with bitwise the same weights;
  a damaged or missing latest checkpoint falls back to the newest one that loads;
- the learning rate warms up over ``warmup_steps``, then follows ``lr_schedule`` (cosine decay
  to 0 at the last step, or constant);
- under torchrun, features are gathered across ranks, so a step equals a single-process step
  on the same global batch; validation metrics are all-reduced, so every rank takes the same
  early-stopping decision (no rank waits forever for another);
- mixed precision on GPU (bf16 where supported, else fp16 with loss scaling), fp32 on CPU;
- a method's :class:`TrainingHooks` (extra trainable modules, the items of each epoch, a step
  hook) keep all of the above: extra modules are checkpointed and restored with the adapters,
  and the items of an epoch depend on nothing but the epoch number.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, resume_candidates, save_checkpoint
from .config import TrainConfig, validate_config
from .._utils.devices import resolve_device
from .ddp import DistributedContext, all_reduce_sum, gather_batch
from ..errors import SafeclipError
from .sampling import ResumableBatchSampler
from ..methods.base import Features, Objective, TrainingHooks

logger = logging.getLogger(__name__)


@dataclass
class TrainingProgress:
    step: int = 0                 # optimizer steps done
    epoch: int = 0                # current epoch
    micro_batch: int = 0          # micro-batches of the current epoch already consumed
    best_metric: float | None = None
    best_step: int | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


def _concatenated(parts: list[Features]) -> Features:
    """Each feature of several micro-batches, concatenated in micro-batch order."""
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}


def _floats(loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> dict[str, float]:
    return {"loss": float(loss.detach()), **{name: float(value) for name, value in terms.items()}}


def _trim_log(path: Path, step: int) -> None:
    """Keep the log records up to ``step``: a run restarted from a checkpoint (or from step 0)
    logs the steps after it again, and must not leave the first attempt's records beside them."""
    if not path.is_file():
        return
    from .._utils.files import atomic_write_text

    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):  # e.g. a line cut short by a kill
            continue
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def lr_factor(step: int, *, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The multiplier of the base learning rate at optimizer step ``step`` (counted from 0).

    A linear warm-up over ``warmup_steps`` steps (the first step uses ``lr / warmup_steps``, the
    last warm-up step the full ``lr``), then ``constant`` keeps ``lr`` and ``cosine`` decays it
    along half a cosine that reaches 0 after ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise SafeclipError(f"lr_schedule '{schedule}' is not one of cosine, constant")
    decayed = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, decayed)))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting; None means plain fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise SafeclipError(f"precision '{precision}' is not one of auto, fp32, bf16, fp16")
    if dtypes[precision] is not None and device.type != "cuda":
        raise SafeclipError(f"precision {precision} needs a GPU; use fp32 on {device.type}")
    return dtypes[precision]


def micro_batch_size(config: TrainConfig, world_size: int) -> int:
    """Items per forward pass: the batch split over the processes and the accumulation steps."""
    per_step = world_size * config.grad_accum_steps
    if config.batch_size % per_step:
        raise SafeclipError(f"batch_size {config.batch_size} is not divisible by world size x "
                            f"grad_accum_steps = {per_step}")
    return config.batch_size // per_step


class Trainer:
    """Optimises the trainable parameters of ``encoder`` (a DualEncoder) against ``objective``."""

    def __init__(self, encoder: torch.nn.Module, objective: Objective, train_dataset, config: TrainConfig,
                 run_dir: str | Path, *, val_dataset=None, device: torch.device | None = None,
                 context: DistributedContext | None = None, hooks: TrainingHooks | None = None,
                 callbacks: Iterable[Callable[["Trainer"], None]] = ()):
        validate_config(config)
        self.config = config
        self.run_dir = Path(run_dir)
        self.context = context or DistributedContext()
        self.device = device or resolve_device(config.device)
        self.objective = objective
        self.hooks = hooks or TrainingHooks()
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self.callbacks = list(callbacks)
        self.micro_batch_size = self._micro_batch_size()
        self.epoch_sizes = self._epoch_sizes()

        self.encoder = encoder.to(self.device)
        self.extra_modules = {name: module.to(self.device) for name, module in self.hooks.extra_modules().items()}
        encoder_parameters = {name: p for name, p in self.encoder.named_parameters() if p.requires_grad}
        self.extra_parameters = {f"method.{name}.{key}": p for name, module in self.extra_modules.items()
                                 for key, p in module.named_parameters() if p.requires_grad}
        self.parameters = {**encoder_parameters, **self.extra_parameters}
        if not encoder_parameters:
            raise SafeclipError("nothing to train: the model has no trainable parameters")
        self.model = self._wrap_ddp(self.encoder)
        groups = [{"params": list(encoder_parameters.values()), "weight_decay": config.weight_decay}]
        if self.extra_parameters:
            groups.append({"params": list(self.extra_parameters.values()), "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=tuple(config.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, schedule=config.lr_schedule,
                                                   warmup_steps=config.warmup_steps, total_steps=self.total_steps))
        self.amp_dtype = autocast_dtype(config.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.progress = TrainingProgress()

    # -- set-up -----------------------------------------------------------------------------
    def _micro_batch_size(self) -> int:
        micro = micro_batch_size(self.config, self.context.world_size)
        if len(self.train_dataset) < self.config.batch_size:
            raise SafeclipError(f"the training set has {len(self.train_dataset)} items, fewer than one batch "
                                f"({self.config.batch_size}); lower batch_size")
        return micro

    def _epoch_items(self, epoch: int) -> Sequence[int] | None:
        items = self.hooks.epoch_items(epoch)
        if items is not None and len(items) < self.config.batch_size:
            raise SafeclipError(f"epoch {epoch} trains on {len(items)} items (the method's selection), fewer "
                                f"than one batch ({self.config.batch_size}); lower batch_size")
        return items

    def _epoch_sizes(self) -> list[int]:
        sizes = []
        for epoch in range(self.config.epochs):
            items = self._epoch_items(epoch)
            sizes.append(len(self.train_dataset) if items is None else len(items))
        return sizes

    def _wrap_ddp(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.context.enabled:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def steps_in_epoch(self, epoch: int) -> int:
        return self.epoch_sizes[epoch] // self.config.batch_size

    @property
    def total_steps(self) -> int:
        total = sum(self.steps_in_epoch(epoch) for epoch in range(self.config.epochs))
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def _epoch_dataset(self, epoch: int):
        items = self._epoch_items(epoch)
        if items is None:
            return self.train_dataset
        return torch.utils.data.Subset(self.train_dataset, [int(i) for i in items])

    def _loader(self, dataset, *, epoch: int, start_micro_batch: int = 0, shuffle: bool = True):
        sampler = ResumableBatchSampler(len(dataset), self.micro_batch_size, seed=self.config.seed, epoch=epoch,
                                        rank=self.context.rank, world_size=self.context.world_size,
                                        start_micro_batch=start_micro_batch, shuffle=shuffle)
        # A private generator: creating a DataLoader iterator must not consume the global RNG,
        # or a resumed run would draw different dropout masks than an uninterrupted one.
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=self.config.data.num_workers,
                                           pin_memory=self.device.type == "cuda", generator=torch.Generator(),
                                           persistent_workers=False)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {key: value.to(self.device, non_blocking=True) if torch.is_tensor(value) else value
                for key, value in batch.items()}

    # -- one optimizer step -------------------------------------------------------------------
    def _gathered(self, features: Features) -> Features:
        return {name: gather_batch(value, self.context) for name, value in features.items()}

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def _micro_batch_loss(self, encoder: Callable, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's loss on one micro-batch (gathered across ranks)."""
        with torch.no_grad():
            fixed = self._gathered(self.objective.fixed_features(batch))
        with self._autocast():
            features = self._gathered(self.objective.embed(encoder, batch))
            return self.objective.loss({**features, **fixed})

    def accumulate_gradients(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """Forward and backward over the micro-batches of one step; returns the step's loss terms.

        With one micro-batch this is a single forward and backward. With several, the gradient
        is that of the loss over the whole step, contrastive negatives included: every
        micro-batch is first embedded without gradients, then embedded again with gradients and
        its fresh features take its place among the cached ones of the step, so each backward
        contributes exactly its own items' share of the full-step gradient. The random state is
        rewound before each recompute, so dropout draws the same masks as in the cached pass.
        """
        self._set_mode(train=True)
        batches = [self._to_device(batch) for batch in micro_batches]
        if len(batches) == 1:
            loss, terms = self._micro_batch_loss(self.model, batches[0])
            self.scaler.scale(loss).backward()
            self._finish_extra_gradients(passes=1)
            return _floats(loss, terms)

        rng_states, cached = [], []
        with torch.no_grad():
            step_fixed = _concatenated([self._gathered(self.objective.fixed_features(batch)) for batch in batches])
            with self._autocast():
                for batch in batches:
                    rng_states.append(self._rng_state())
                    cached.append(self._gathered(self.objective.embed(self.encoder, batch)))
        for index, batch in enumerate(batches):
            self._set_rng_state(rng_states[index])
            is_last = index == len(batches) - 1
            sync = contextlib.nullcontext() if is_last or not self.context.enabled else self.model.no_sync()
            with sync:
                with self._autocast():
                    fresh = self._gathered(self.objective.embed(self.model, batch))
                    features = _concatenated(cached[:index] + [fresh] + cached[index + 1:])
                    loss, terms = self.objective.loss({**features, **step_fixed})
                self.scaler.scale(loss).backward()
        self._finish_extra_gradients(passes=len(batches))
        return _floats(loss, terms)

    def _set_mode(self, *, train: bool) -> None:
        self.model.train(train)
        for module in self.extra_modules.values():
            module.train(train)

    def _finish_extra_gradients(self, passes: int) -> None:
        """Make the extra modules' gradients those of the step's loss.

        They act on the features of the whole step, so each of the ``passes`` backward passes
        adds their full gradient once: keep the mean. Every rank computes the same loss over the
        gathered features; averaging across ranks keeps their copies equal even where GPU
        kernels round differently.
        """
        gradients = [p.grad for p in self.extra_parameters.values() if p.grad is not None]
        if not gradients:
            return
        if passes > 1:
            torch._foreach_div_(gradients, float(passes))
        if self.context.enabled:
            flat = torch.cat([g.reshape(-1) for g in gradients])
            flat = all_reduce_sum(flat, self.context) / self.context.world_size
            offset = 0
            for g in gradients:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def _rng_state(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set_rng_state(self, state: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    def optimizer_step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.hooks.after_step(self)

    # -- validation -----------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss and loss terms over the validation set (sharded across ranks, all-reduced)."""
        self._set_mode(train=False)
        sums: dict[str, float] = {}
        batches = 0
        # every rank runs the same number of batches (the sampler drops the incomplete last one),
        # so the collective calls inside the objective stay matched
        loader = self._loader(self.val_dataset, epoch=0, shuffle=False)
        for batch in loader:
            loss, terms = self._micro_batch_loss(self.encoder, self._to_device(batch))
            for name, value in {"loss": loss, **terms}.items():
                sums[name] = sums.get(name, 0.0) + float(value)
            batches += 1
        names = sorted(sums)
        packed = torch.tensor([sums[name] for name in names] + [batches], dtype=torch.float64, device=self.device)
        packed = all_reduce_sum(packed, self.context)
        count = max(1.0, float(packed[-1]))
        return {f"val_{name}": float(value) / count for name, value in zip(names, packed[:-1])}

    def _early_stopping_update(self, metrics: dict[str, float]) -> None:
        name = self.config.early_stopping_metric
        if name not in metrics:
            raise SafeclipError(f"early_stopping_metric '{name}' is not a validation metric "
                                f"(available: {', '.join(sorted(metrics))})")
        value = metrics[name]
        progress = self.progress
        if progress.best_metric is None or value < progress.best_metric:
            progress.best_metric, progress.best_step = value, progress.step
            progress.epochs_without_improvement = 0
            if self.context.is_main:
                self._save_best()
        else:
            progress.epochs_without_improvement += 1
        patience = self.config.early_stopping_patience
        progress.stopped_early = patience > 0 and progress.epochs_without_improvement >= patience

    # -- checkpoints -----------------------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self.parameters.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.parameters) - set(state)
        if missing:
            raise SafeclipError(f"checkpoint lacks trainable parameter {sorted(missing)[0]} (different config?)")
        with torch.no_grad():
            for name, parameter in self.parameters.items():
                parameter.copy_(state[name].to(parameter.device))

    def _save_best(self) -> None:
        from safetensors.torch import save_file
        from .._utils.files import atomic_write

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.cpu().contiguous() for name, tensor in self.trainable_state().items()}
        atomic_write(self.checkpoint_dir / "best.safetensors", lambda tmp: save_file(state, str(tmp)))

    def save_checkpoint(self) -> None:
        if not self.context.is_main:
            return
        training_state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                          "scaler": self.scaler.state_dict(), "rng": capture_rng_state()}
        progress = {key: value for key, value in vars(self.progress).items()}
        save_checkpoint(self.checkpoint_dir, self.progress.step, self.trainable_state(), training_state, progress)

    def resume(self) -> bool:
        """Restore the latest checkpoint of this run folder; False when there is none.

        When ``checkpoints/latest`` names a checkpoint that is missing or does not load, the
        newest one that does is used, with a warning; checkpoints that all fail to load are an
        error, never a silent restart from step 0.
        """
        candidates = resume_candidates(self.checkpoint_dir)
        failures: list[str] = []
        for path in candidates:
            try:
                trainable, training_state, progress = load_checkpoint(path, self.device)
            except SafeclipError as error:
                failures.append(str(error))
                continue
            if failures and self.context.is_main:
                logger.warning("%s; resuming from the older %s instead", failures[0], path.name)
            self._restore(trainable, training_state, progress)
            logger.info("resumed from %s (step %d, epoch %d)", path, self.progress.step, self.progress.epoch)
            return True
        if failures:
            raise SafeclipError(f"no checkpoint in {self.checkpoint_dir} can be resumed ({failures[-1]}); "
                                f"delete that folder to start over")
        return False

    def _restore(self, trainable: dict[str, torch.Tensor], training_state: dict[str, Any],
                 progress: dict[str, Any]) -> None:
        self.load_trainable_state(trainable)
        self.optimizer.load_state_dict(training_state["optimizer"])
        self.scheduler.load_state_dict(training_state["scheduler"])
        self.scaler.load_state_dict(training_state["scaler"])
        self.progress = TrainingProgress(**progress)
        restore_rng_state(training_state["rng"])

    def restore_best(self) -> None:
        """Load the weights of the best validation epoch, if validation ran."""
        from safetensors.torch import load_file

        best = self.checkpoint_dir / "best.safetensors"
        if self.progress.best_step is not None and best.is_file():
            self.load_trainable_state(load_file(str(best)))

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> TrainingProgress:
        config, progress = self.config, self.progress
        accum = config.grad_accum_steps
        bar = tqdm(total=self.total_steps, initial=progress.step, disable=not self.context.is_main,
                   desc="train", dynamic_ncols=True)
        log_path = self.run_dir / "train_log.jsonl"
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _trim_log(log_path, progress.step)
        try:
            while progress.epoch < config.epochs and progress.step < self.total_steps and not progress.stopped_early:
                loader = self._loader(self._epoch_dataset(progress.epoch), epoch=progress.epoch,
                                      start_micro_batch=progress.micro_batch)
                pending: list[dict[str, Any]] = []
                for batch in loader:
                    pending.append(batch)
                    if len(pending) < accum:
                        continue
                    terms = self.accumulate_gradients(pending)
                    lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                    self.optimizer_step()
                    pending = []
                    progress.step += 1
                    progress.micro_batch += accum
                    if not math.isfinite(terms["loss"]):
                        raise SafeclipError(f"loss became {terms['loss']} at step {progress.step}; "
                                            f"lower the learning rate or use precision fp32")
                    bar.update(1)
                    bar.set_postfix({name: f"{value:.3f}" for name, value in terms.items()}, refresh=False)
                    if self.context.is_main and (progress.step % config.log_every == 0 or progress.step == 1):
                        with log_path.open("a") as log:
                            log.write(json.dumps({"step": progress.step, "epoch": progress.epoch,
                                                  "lr": lr, **terms}) + "\n")
                    if progress.step % config.checkpoint_every == 0:
                        self.save_checkpoint()
                    for callback in self.callbacks:
                        callback(self)
                    if progress.step >= self.total_steps:
                        break
                # leftover micro-batches that cannot fill a whole step are dropped
                if progress.micro_batch >= self.steps_in_epoch(progress.epoch) * accum:
                    self._end_epoch()
        finally:
            bar.close()
        self.save_checkpoint()
        return progress

    def _end_epoch(self) -> None:
        progress = self.progress
        record: dict[str, Any] = {"epoch": progress.epoch, "step": progress.step}
        if self.val_dataset is not None and len(self.val_dataset) >= self.micro_batch_size * self.context.world_size:
            metrics = self.validate()
            record.update(metrics)
            self._early_stopping_update(metrics)
            if self.context.is_main:
                logger.info("epoch %d: %s", progress.epoch,
                            ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.startswith("val_")))
        progress.history.append(record)
        progress.epoch += 1
        progress.micro_batch = 0
        self.save_checkpoint()
