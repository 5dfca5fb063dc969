"""The plug-in interface of a safety method, and the training run its hooks see.

``safeclip train`` runs every method through the same pipeline (``safeclip_sdk.training``):

1. load the data and the base CLIP; keep a frozen copy of it if the method asks
   (``uses_frozen_reference``); put LoRA adapters on the towers;
2. :meth:`Method.prepare`: passes that must run once before training (SafeR-CLIP's proximity
   targets);
3. :meth:`Method.dataset` for the training and validation splits, :meth:`Method.objective` for
   the loss;
4. the shared :class:`~safeclip_sdk.trainer.Trainer`, which calls the method's
   :class:`~safeclip_sdk.trainer.TrainingHooks`: ``extra_modules`` (trainable modules beside the
   towers, e.g. HySAC's curvature and scales, in their own parameter group without weight decay,
   checkpointed with the adapters), ``epoch_items`` (the items of each epoch, e.g. SafeR-CLIP's
   curriculum) and ``after_step`` (e.g. HySAC's clamps);
5. merge the adapters, then :meth:`Method.finish` returns the method's keys for ``safeclip.json``
   (at least ``embedding_space``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..trainer import Objective, TrainingHooks

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..data import QuadrupletSet
    from ..distributed import DistributedContext
    from ..lora import FrozenReference
    from ..models import LoadedModel


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
    title: ClassVar[str]                       # the paper, for model cards and docs
    summary: ClassVar[str]                     # one paragraph for the model card
    uses_frozen_reference: ClassVar[bool] = True
    resumable_settings: ClassVar[tuple[str, ...]] = ()  # section keys a resumed run may change

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
        return {"embedding_space": {"kind": "cosine", "dim": run.embed_dim}}
