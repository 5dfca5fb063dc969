"""The plug-in interface of a safety method (training hooks, and the inference class its models
use), and the training run its hooks see.

``safeclip train`` runs every method through the same pipeline (``safeclip_sdk.training.run``):

1. load the data and the base CLIP; keep a frozen copy of it if the method asks
   (``uses_frozen_reference``); put LoRA adapters on the towers;
2. :meth:`Method.prepare`: passes that must run once before training (e.g. a target search over
   the training captions);
3. :meth:`Method.dataset` for the training and validation splits, :meth:`Method.objective` for
   the loss;
4. the shared :class:`~safeclip_sdk.training.loop.Trainer`, which calls the method's
   :class:`TrainingHooks` (defined here): ``extra_modules`` (trainable modules beside the
   towers, e.g. a learnable curvature and scales, in their own parameter group without weight
   decay, checkpointed with the adapters), ``epoch_items`` (the items of each epoch, e.g. a
   curriculum) and ``after_step`` (e.g. clamps on learned parameters);
5. merge the adapters, then :meth:`Method.finish` returns the method's keys for ``safeclip.json``
   (at least ``embedding_space``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from ..model.spaces import COSINE
from .inference import Inference

if TYPE_CHECKING:  # the training layer sits above the methods: types only
    from ..data import QuadrupletSet
    from ..model.folder import LoadedModel
    from ..training.config import TrainConfig
    from ..training.ddp import DistributedContext
    from ..training.lora import FrozenReference
    from ..training.loop import Trainer


Features = dict[str, torch.Tensor]


class Objective(Protocol):
    """A training method's loss, in the parts the trainer needs to accumulate it exactly.

    Every feature is a tensor whose rows are the items of the batch, in batch order. The
    trainer gathers each one across ranks and concatenates the micro-batches of an optimizer
    step, so :meth:`loss` always sees the features of the whole global step.
    """

    def embed(self, encoder: Callable, batch: dict[str, Any]) -> Features:
        """Features of one micro-batch from the model being trained: call
        ``encoder(images=..., texts=...)`` exactly once (under DDP, gradients sync through it)."""
        ...

    def fixed_features(self, batch: dict[str, Any]) -> Features:
        """Features that do not depend on the trained weights (e.g. a frozen reference model's);
        computed once per micro-batch, without gradients."""
        ...

    def loss(self, features: Features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(total loss, detached named terms) over the features of :meth:`embed` and
        :meth:`fixed_features` together."""
        ...


class TrainingHooks:
    """What a method may add to the shared loop; each hook is optional and does nothing by default."""

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        """Trainable modules beside the towers (e.g. a learnable geometry the loss uses), by name.

        Their parameters form a second optimizer group without weight decay, are saved in every
        checkpoint as ``method.<name>.<parameter>`` and restored on resume.
        """
        return {}

    def epoch_items(self, epoch: int) -> Sequence[int] | None:
        """The training items of ``epoch`` (indices into the training set), or None for all.

        Must depend only on ``epoch`` (and state fixed before training), so a resumed run sees
        the same items.
        """
        return None

    def after_step(self, trainer: Trainer) -> None:
        """Called after every optimizer step (e.g. to clamp parameters into their range)."""


@dataclass
class TrainingRun:
    """What a method's hooks may use: the run's settings, data, base model and device."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    context: DistributedContext
    base: LoadedModel                  # the base CLIP (adapted in place once LoRA is applied)
    train_set: QuadrupletSet
    val_set: QuadrupletSet | None
    with_unsafe_images: bool           # the training data has unsafe images and the image tower trains
    reference: FrozenReference | None  # frozen copy of the base model, if the method uses one

    @property
    def train_image_tower(self) -> bool:
        return self.config.lora.towers == "both"

    @property
    def embed_dim(self) -> int:
        return int(self.base.model_cfg["embed_dim"])

    def split(self, name: str) -> QuadrupletSet | None:
        return {"train": self.train_set, "val": self.val_set}[name]


class Method(TrainingHooks):
    """A safety method: its name, its config section and what it does around the shared loop.

    Subclasses set the class attributes, implement :meth:`objective` and override the hooks they
    need; every other hook does nothing by default. ``self.method_config`` is the instance of
    ``config_class`` read from the run config's ``<section>:`` mapping.
    """

    name: ClassVar[str]                        # `--method NAME`, safeclip.json["method"]
    section: ClassVar[str]                     # YAML mapping and `--set SECTION.key=value` prefix
    section_aliases: ClassVar[tuple[str, ...]] = ()  # older names of the section, still read
    config_class: ClassVar[type]               # dataclass of the method's settings
    display_name: ClassVar[str]                # the method's short name in reports (``Safe-CLIP``)
    title: ClassVar[str]                       # the paper, for model cards and docs
    summary: ClassVar[str]                     # one paragraph for the model card
    uses_frozen_reference: ClassVar[bool] = True
    # how many times the shared schedule this method gets when methods are compared side by side
    # (the demo's --all-methods): a method that moves the base into a new geometry needs more steps
    schedule_factor: ClassVar[int] = 1
    resumable_settings: ClassVar[tuple[str, ...]] = ()  # section keys a resumed run may change
    # inference: what the trained model does (see methods/inference.py)
    inference_class: ClassVar[type[Inference]] = Inference
    metadata_keys: ClassVar[tuple[str, ...]] = ()       # safeclip.json keys of the method (exports carry them)
    space_kinds: ClassVar[tuple[str, ...]] = (COSINE,)  # embedding spaces the method's models embed into

    def __init__(self, config: TrainConfig):
        self.config = config
        self.method_config = config.method_config

    def prepare(self, run: TrainingRun) -> None:
        """Runs once before the datasets and the objective are built (every rank calls it)."""

    def dataset(self, run: TrainingRun, split: str) -> torch.utils.data.Dataset:
        """The torch dataset of ``split`` (``"train"`` or ``"val"``): quadruplets by default."""
        from ..data import QuadrupletDataset

        return QuadrupletDataset(run.split(split).items, run.base.preprocess, run.base.tokenizer,
                                 with_unsafe_images=run.with_unsafe_images)

    def objective(self, run: TrainingRun) -> Objective:
        raise NotImplementedError

    def finish(self, run: TrainingRun, model: torch.nn.Module) -> dict[str, Any]:
        """Keys added to ``safeclip.json``, from the merged ``model``; cosine methods by default."""
        return {"embedding_space": {"kind": COSINE, "dim": run.embed_dim}}

    @classmethod
    def model_card_notes(cls, metadata: dict[str, Any]) -> list[str]:
        """Paragraphs the model card adds about a model of this method (its ``safeclip.json``)."""
        return []
