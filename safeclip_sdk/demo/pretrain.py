"""Plain CLIP pre-training from scratch, used by the offline demo to make its base model.

No pretrained CLIP can be downloaded in the demo's setting, so it first trains a small CLIP on
safe AND unsafe scenes: a base model that knows unsafe concepts, which is the situation
Safe-CLIP fixes. Every parameter is trained, with the standard symmetric contrastive loss at a
fixed temperature; the loop is the same Trainer (checkpoints, resume, DDP) as Safe-CLIP's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .._utils.version import __version__
from ..training.config import TrainConfig, to_dict, validate_config
from ..model.folder import LoadedModel, load_model, save_model_dir
from .._utils.devices import resolve_device
from ..training.loop import Trainer


class ClipObjective:
    """CLIP's symmetric contrastive loss between the image and the text of each pair."""

    def __init__(self, tau: float):
        self.tau = tau

    def embed(self, encoder, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image_features, text_features = encoder(images=batch["image"], texts=batch["text"])
        return {"image": image_features, "text": text_features}

    def fixed_features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {}

    def loss(self, features: dict[str, torch.Tensor]):
        from ..methods.losses import contrastive_loss

        return contrastive_loss(features["image"], features["text"], self.tau), {}


def pretrain_clip(architecture: str, train_data: str | Path, output_dir: str | Path, *,
                  config: TrainConfig, tau: float = 0.07) -> LoadedModel:
    """Train ``architecture`` from random weights on the image-caption pairs of a quadruplet file
    (safe and unsafe pairs) and save it as a model folder in ``output_dir/model``."""
    from ..data import ImageTextPairs, load_dataset
    from ..model.towers import DualEncoder

    validate_config(config)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    base = load_model(architecture, device=device)
    base.model.logit_scale.requires_grad_(False)  # fixed temperature; every other weight trains
    data = load_dataset(train_data)
    pairs = ImageTextPairs.from_quadruplets(data.items, base.preprocess, base.tokenizer, include_unsafe=True)
    trainer = Trainer(DualEncoder(base.model), ClipObjective(tau), pairs, config,
                      output_dir, device=device)
    if config.resume:
        trainer.resume()
    progress = trainer.fit()
    base.model.eval()
    metadata = {"safeclip_version": __version__, "method": "base",
                "base_model": {"source": architecture, "pretrained": None},
                "data": {"train": str(train_data), "pairs": len(pairs)},
                "config": to_dict(config), "metrics": {"steps": progress.step},
                "embedding_space": {"kind": "cosine", "dim": int(base.model_cfg["embed_dim"])}}
    save_model_dir(Path(output_dir) / "model", base.model, base.model_cfg, base.preprocess_cfg, metadata=metadata)
    return base
