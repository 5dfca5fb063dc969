"""SafeR-CLIP as a registered method: the target pass, the objective and the curriculum."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import register
from ..base import Method, TrainingRun
from ..losses import resolve_temperature
from ..safe_clip.method import embed_quadruplets
from .config import SaferClipConfig
from .curriculum import Curriculum
from .losses import SaferClipEmbeddings, SaferClipLoss
from .targets import ProximityTargets, nearest_safe_captions, weights_fingerprint

logger = logging.getLogger(__name__)


class SaferClipObjective:
    """SafeR-CLIP's loss as a trainer Objective, on batches that carry their proximity target."""

    def __init__(self, reference, loss: SaferClipLoss, *, train_image_tower: bool):
        self.reference, self.loss_fn = reference, loss
        self.train_image_tower = train_image_tower

    def embed(self, encoder, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return embed_quadruplets(encoder, batch, train_image_tower=self.train_image_tower)

    def fixed_features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """T0(t), V0(v), T0(target caption); with unsafe images also T0(t*), V0(v*), V0(target image)."""
        n = batch["safe_text"].shape[0]
        with_unsafe_images = "unsafe_image" in batch
        texts = [batch["safe_text"], batch["target_text"]] + ([batch["unsafe_text"]] if with_unsafe_images else [])
        images = [batch["safe_image"]] + ([batch["unsafe_image"], batch["target_image"]] if with_unsafe_images else [])
        text, image = self.reference.encode_text(torch.cat(texts)), self.reference.encode_image(torch.cat(images))
        features = {"ref_text_safe": text[:n], "ref_text_target": text[n:2 * n], "ref_image_safe": image[:n]}
        if with_unsafe_images:
            features.update(ref_text_unsafe=text[2 * n:], ref_image_unsafe=image[n:2 * n],
                            ref_image_target=image[2 * n:])
        return features

    def loss(self, features: dict[str, torch.Tensor]):
        return self.loss_fn(SaferClipEmbeddings(**features))


@register
class SaferClip(Method):
    name = "safer-clip"
    section = "safer_clip"
    config_class = SaferClipConfig
    resumable_settings = ("cache_dir", "target_batch_size")
    display_name = "SafeR-CLIP"
    title = "SafeR-CLIP (Yousaf et al., AAAI 2026)"
    summary = ("Each unsafe caption and image was redirected towards its closest safe alternative in the "
               "training pool (under the original encoders), not onto one fixed counterpart, disturbing the "
               "pretrained geometry as little as possible; safe inputs stay where they were.")

    def prepare(self, run: TrainingRun) -> None:
        """The proximity targets of the training split (and of the validation split, against the
        training pool) under the frozen text encoder; cached, see :mod:`.targets`."""
        self.curriculum: Curriculum = self.method_config.curriculum.build()
        self.targets = {split: self._targets(run, split) for split in ("train", "val") if run.split(split)}
        train = self.targets["train"]
        if run.context.is_main:
            logger.info("proximity targets: %d items, similarity to target mean %.3f; curriculum thresholds %s",
                        len(train.indices), float(train.similarities.mean()),
                        [round(t, 3) for t in self.curriculum.thresholds(train.similarities)])

    def _targets(self, run: TrainingRun, split: str) -> ProximityTargets:
        reference, tokenizer = run.reference, run.base.tokenizer
        cache = Path(self.method_config.cache_dir or run.run_dir / "cache") / f"{split}-targets"

        def embed_texts(texts: list[str]) -> torch.Tensor:
            return reference.encode_text(tokenizer(texts).to(run.device))

        def compute() -> ProximityTargets:
            return nearest_safe_captions(
                [item.unsafe_text for item in run.split(split).items], [item.safe_text for item in run.train_set.items],
                embed_texts, model_fingerprint=fingerprint, cache_dir=cache,
                batch_size=self.method_config.target_batch_size, progress=run.context.is_main)

        fingerprint = weights_fingerprint(reference.model)
        if not run.context.enabled:
            return compute()
        # the main process computes and caches, the others then read the cache
        targets = compute() if run.context.is_main else None
        torch.distributed.barrier()
        return targets if targets is not None else compute()

    def dataset(self, run: TrainingRun, split: str):
        from .data import WithProximityTargets

        return WithProximityTargets(super().dataset(run, split), run.train_set.items, self.targets[split].indices,
                                    run.base.preprocess, run.base.tokenizer, with_target_images=run.with_unsafe_images)

    def objective(self, run: TrainingRun) -> SaferClipObjective:
        settings = self.method_config
        tau = resolve_temperature(settings.tau, run.base.model, f"{self.section}.tau")
        logger.info("contrastive temperature %.4g (%s)", tau, settings.tau)
        loss = SaferClipLoss(settings.weights, tau=tau, normalization=settings.normalization,
                             relative_tau=settings.relative_tau)
        return SaferClipObjective(run.reference, loss, train_image_tower=run.train_image_tower)

    def epoch_items(self, epoch: int) -> np.ndarray:
        """The curriculum's items of ``epoch``: a fixed function of the cached similarities."""
        return self.curriculum.indices(self.targets["train"].similarities, epoch)
