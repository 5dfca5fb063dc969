"""Synthetic quadruplet batches for trainer tests: random pixels and token ids, no files."""

from __future__ import annotations

import torch

from safeclip_sdk.training.config import LoraConfig, TrainConfig
from safeclip_sdk.training.lora import FrozenReference, apply_lora
from safeclip_sdk.model.towers import DualEncoder
from safeclip_sdk.methods.safe_clip.config import SafeClipConfig
from safeclip_sdk.methods.safe_clip.losses import SafeClipLoss
from safeclip_sdk.methods.safe_clip.method import SafeClipObjective
from safeclip_sdk.model.folder import load_model


class SyntheticQuadruplets(torch.utils.data.Dataset):
    def __init__(self, size: int, *, image_size: int = 64, context_length: int = 32, with_unsafe_images=True,
                 seed: int = 123):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(size, 2, 3, image_size, image_size, generator=generator)
        tokens = torch.randint(1, 49405, (size, 2, context_length), generator=generator)
        tokens[:, :, 0] = 49406                      # start of text
        tokens[:, :, 12] = 49407                     # end of text (argmax pooling picks it)
        tokens[:, :, 13:] = 0
        self.tokens = tokens
        self.with_unsafe_images = with_unsafe_images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        item = {"index": index, "safe_image": self.images[index, 0], "safe_text": self.tokens[index, 0],
                "unsafe_text": self.tokens[index, 1]}
        if self.with_unsafe_images:
            item["unsafe_image"] = self.images[index, 1]
        return item


def make_encoder_and_objective(*, lora_dropout=0.0, loss_weights=None, seed=0):
    """A tiny CLIP with LoRA on both towers, its frozen reference and the Safe-CLIP objective."""
    torch.manual_seed(seed)
    base = load_model("safeclip-tiny")
    reference = FrozenReference(base.model)
    peft_model = apply_lora(base.model, LoraConfig(rank=4, alpha=4.0, dropout=lora_dropout))
    loss_config = SafeClipConfig(tau=0.01) if loss_weights is None else SafeClipConfig(tau=0.01, weights=loss_weights)
    objective = SafeClipObjective(reference, SafeClipLoss(loss_config), train_image_tower=True)
    return DualEncoder(peft_model), objective


def make_hysac_encoder_and_method(*, lora_dropout=0.0, seed=0):
    """A tiny CLIP with LoRA on both towers and the HySAC method (its head, objective and hooks)."""
    from types import SimpleNamespace

    from safeclip_sdk.methods.hysac.method import HySAC

    torch.manual_seed(seed)
    base = load_model("safeclip-tiny")
    peft_model = apply_lora(base.model, LoraConfig(rank=4, alpha=4.0, dropout=lora_dropout))
    method = HySAC(TrainConfig(method="hysac"))
    method.prepare(SimpleNamespace(embed_dim=int(base.model_cfg["embed_dim"])))
    return DualEncoder(peft_model), method


def trainer_config(tmp_path, **values) -> TrainConfig:
    defaults = dict(output_dir=str(tmp_path), batch_size=8, lr=1e-3, epochs=1, device="cpu",
                    checkpoint_every=1000, log_every=1000, early_stopping_patience=0)
    defaults.update(values)
    return TrainConfig(**defaults)
