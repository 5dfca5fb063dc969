"""Import shims for the pinned CPU stack.

The only torchvision 0.28.0 wheel on PyPI is a CUDA build. Next to the CPU build of torch 2.13
its compiled operators do not load, and ``import torchvision`` (so ``import open_clip`` and
``transformers.CLIPModel``) fails with ``RuntimeError: operator torchvision::nms does not exist``.
torchvision's Python side only needs the two operator *schemas* to exist; CLIP never calls them.
We declare them and import again. The fix runs only after the real import has failed, so a
working CUDA torch + torchvision pair is never touched.
"""

from __future__ import annotations

import importlib
import sys

_MISSING_OP_MESSAGE = "operator torchvision::nms does not exist"
_schema_library = None  # kept alive: dropping the Library object would unregister the schemas


def ensure_torchvision() -> None:
    """Make ``import torchvision`` work; call before importing open_clip or transformers."""
    global _schema_library
    try:
        importlib.import_module("torchvision")
        return
    except RuntimeError as error:
        if _MISSING_OP_MESSAGE not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]

    import torch

    _schema_library = torch.library.Library("torchvision", "DEF")
    _schema_library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _schema_library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    importlib.import_module("torchvision")


def import_open_clip():
    """``import open_clip`` with the torchvision fix applied when needed."""
    ensure_torchvision()
    import open_clip

    return open_clip
