"""Safe-CLIP as a registered method: the objective the trainer runs and nothing else around it."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from .. import register
from ..base import Method, TrainingRun
from ..losses import resolve_temperature
from .config import SafeClipConfig
from .losses import SafeClipEmbeddings, SafeClipLoss

logger = logging.getLogger(__name__)


class SafeClipObjective:
    """Safe-CLIP's eight-term loss as a trainer Objective."""

    def __init__(self, reference, loss: SafeClipLoss, *, train_image_tower: bool):
        self.reference, self.loss_fn = reference, loss
        self.train_image_tower = train_image_tower

    def embed(self, encoder, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """T(t), T(t*) and, when the image tower trains, V(v) and V(v*) (if the data has them)."""
        return embed_quadruplets(encoder, batch, train_image_tower=self.train_image_tower)

    def fixed_features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """T0(t) and V0(v) from the frozen reference."""
        return {"ref_text_safe": self.reference.encode_text(batch["safe_text"]),
                "ref_image_safe": self.reference.encode_image(batch["safe_image"])}

    def loss(self, features: dict[str, torch.Tensor]):
        return self.loss_fn(SafeClipEmbeddings(**features))


def embed_quadruplets(encoder, batch: dict[str, Any], *, train_image_tower: bool) -> dict[str, torch.Tensor]:
    """The trained towers' raw features of a quadruplet batch, in one encoder call:
    ``text_safe``, ``text_unsafe`` and, with images, ``image_safe`` and ``image_unsafe`` (when the
    batch has unsafe images)."""
    safe_text, unsafe_text = batch["safe_text"], batch["unsafe_text"]
    safe_image, unsafe_image = batch["safe_image"], batch.get("unsafe_image")
    n = safe_text.shape[0]
    images = None
    if train_image_tower:
        images = safe_image if unsafe_image is None else torch.cat([safe_image, unsafe_image])
    image_features, text_features = encoder(images=images, texts=torch.cat([safe_text, unsafe_text]))
    features = {"text_safe": text_features[:n], "text_unsafe": text_features[n:]}
    if image_features is not None:
        features["image_safe"] = image_features[:n]
        if unsafe_image is not None:
            features["image_unsafe"] = image_features[n:]
    return features


@register
class SafeClip(Method):
    name = "safe-clip"
    section = "safe_clip"
    section_aliases = ("loss",)
    config_class = SafeClipConfig
    display_name = "Safe-CLIP"
    title = "Safe-CLIP (Poppi et al., ECCV 2024)"
    summary = ("Unsafe text and images are redirected to where their safe counterparts were in the original "
               "embedding space; safe inputs stay where they were, so existing indexes and downstream models "
               "keep working.")

    def objective(self, run: TrainingRun) -> SafeClipObjective:
        tau = resolve_temperature(self.method_config.tau, run.base.model, f"{self.section}.tau")
        logger.info("contrastive temperature %.4g (%s)", tau, self.method_config.tau)
        loss = SafeClipLoss(dataclasses.replace(self.method_config, tau=tau))
        return SafeClipObjective(run.reference, loss, train_image_tower=run.train_image_tower)
