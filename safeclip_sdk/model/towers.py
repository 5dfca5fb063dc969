"""Calling a CLIP's towers through whatever wraps them: peft adapters, DDP, :class:`DualEncoder`."""

from __future__ import annotations

from torch import Tensor, nn

from .._utils.compat import ensure_torchvision

ensure_torchvision()  # peft imports transformers, which imports torchvision
import peft  # noqa: E402


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / DataParallel and :class:`DualEncoder` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(model, DualEncoder):
            model = model.model
        else:
            return model


def _clip_of(model: nn.Module) -> nn.Module:
    """The open_clip module that owns ``encode_text`` / ``encode_image`` (adapters included)."""
    model = unwrap_model(model)
    return model.get_base_model() if isinstance(model, peft.PeftModel) else model


def encode_text(model: nn.Module, tokens: Tensor) -> Tensor:
    """Unnormalised text features of a CLIP, a PeftModel, or either wrapped in DDP / DualEncoder.

    This bypasses DDP's forward: under DDP, train through a wrapped :class:`DualEncoder` instead.
    """
    return _clip_of(model).encode_text(tokens, normalize=False)


def encode_image(model: nn.Module, images: Tensor) -> Tensor:
    """Unnormalised image features; see :func:`encode_text`."""
    return _clip_of(model).encode_image(images, normalize=False)


class DualEncoder(nn.Module):
    """Both towers behind one ``forward``, so that DistributedDataParallel can wrap the model.

    DDP synchronises gradients only through its own ``forward``: the trainer wraps THIS module
    in DDP and calls it once per step with every image and text of the step concatenated.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor | None = None,
                texts: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """(image features or None, text features or None), unnormalised."""
        image_features = encode_image(self.model, images) if images is not None else None
        text_features = encode_text(self.model, texts) if texts is not None else None
        return image_features, text_features
