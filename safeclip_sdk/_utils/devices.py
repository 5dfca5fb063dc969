"""Turning a device setting (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a torch device."""

from __future__ import annotations

import torch

from ..errors import SafeclipError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` picks CUDA when torch sees a GPU; asking for CUDA without one is a clear error."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SafeclipError(f"device '{name}': {str(error).splitlines()[0]}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SafeclipError(f"device '{name}' requested but torch sees no CUDA GPU")
    return device
