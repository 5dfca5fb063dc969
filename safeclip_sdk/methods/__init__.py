"""The safety methods, one sub-package each (in the way peft keeps one folder per tuner).

Every method registers a :class:`~safeclip_sdk.methods.base.Method` under its name; ``safeclip
train --method NAME``, config validation and the docs list what is registered here:

- ``safe-clip`` (:mod:`.safe_clip`): Safe-CLIP (Poppi et al., ECCV 2024);
- ``safer-clip`` (:mod:`.safer_clip`): SafeR-CLIP (Yousaf et al., AAAI 2026);
- ``hysac`` (:mod:`.hysac`): HySAC (Poppi et al., CVPR 2025).

A method owns both sides of its life: training (the hooks of :class:`~.base.Method`) and
inference (its :class:`~.inference.Inference` subclass: embedding space, classifier, query
transformation, what an export carries). :func:`inference_of` turns a model folder's or export's
metadata into that object, so the Encoder, export, search, reindex and evaluation never test for
a method's name. A new method is a sub-package with a config dataclass and a ``Method`` subclass,
registered with :func:`register` (docs/architecture.md has the checklist).
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from ..errors import SafeclipError
from ..model.folder import METADATA_FILE, LoadedModel, load_model
from ..model.spaces import COSINE, EmbeddingSpace, model_space
from .inference import CLASSIFYING_METHODS, Inference

#: the method ``safeclip train`` and the demo use when none is named
DEFAULT_METHOD = "safe-clip"
_REGISTRY: dict[str, type] = {}
_BUILT_IN = {"safe-clip": ".safe_clip.method", "safer-clip": ".safer_clip.method", "hysac": ".hysac.method"}


def register(method: type) -> type:
    """Make a :class:`~safeclip_sdk.methods.base.Method` subclass available by its ``name``
    (usable as a class decorator). Registering another class under a taken name is an error."""
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not name:
        raise SafeclipError(f"{method.__name__}: a method needs a non-empty 'name'")
    known = _REGISTRY.get(name)
    if known is not None and known is not method:
        raise SafeclipError(f"method '{name}' is already registered ({known.__module__}.{known.__name__})")
    sections = {other.section: other.name for other in _REGISTRY.values() if other is not method}
    if method.section in sections:
        raise SafeclipError(f"method '{name}': config section '{method.section}' is taken by "
                            f"'{sections[method.section]}'")
    _REGISTRY[name] = method
    if method.inference_class.method_classifies and name not in CLASSIFYING_METHODS:
        CLASSIFYING_METHODS.append(name)
    return method


def _load_built_in() -> None:
    for module in _BUILT_IN.values():
        import_module(module, __name__)


def available_methods() -> list[str]:
    """The registered method names, built-in ones first."""
    _load_built_in()
    return [*[name for name in _BUILT_IN if name in _REGISTRY],
            *sorted(name for name in _REGISTRY if name not in _BUILT_IN)]


def get_method(name: str) -> type:
    """The registered method class called ``name``; a one-line error listing the others."""
    _load_built_in()
    if name not in _REGISTRY:
        raise SafeclipError(f"method '{name}' is not one of {', '.join(available_methods())}")
    return _REGISTRY[name]


def method_sections() -> dict[str, type]:
    """Config section name (and each old alias) -> method class."""
    _load_built_in()
    sections = {}
    for method in _REGISTRY.values():
        sections[method.section] = method
        sections.update(dict.fromkeys(method.section_aliases, method))
    return sections


def inference_of(metadata: Mapping[str, Any], embed_dim: int, where: str) -> Inference:
    """How a model with this ``safeclip.json`` (or export manifest) is used after training: its
    embedding space and whatever its method adds. ``where`` names the file in errors."""
    _load_built_in()
    space = model_space(dict(metadata), embed_dim, where)
    method = method_of(metadata, space)
    if method is None:
        return Inference(space)
    return method.inference_class.from_metadata(metadata, space, method.name, where)


def model_inference(model: LoadedModel) -> Inference:
    """:func:`inference_of` a loaded model's ``safeclip.json``."""
    return inference_of(model.metadata, int(model.model_cfg["embed_dim"]), f"{model.source}/{METADATA_FILE}")


def load_checked_model(source: str, pretrained: str | None = None, *, device: Any = "cpu") -> LoadedModel:
    """Load a model (any source ``safeclip_sdk.model.folder.load_model`` accepts) whose folder's
    space and method keys are checked before the weights load (``safeclip_sdk.load_model``)."""
    return load_model(source, pretrained, device=device, check_metadata=inference_of)


def method_of(metadata: Mapping[str, Any], space: EmbeddingSpace) -> type | None:
    """The registered method of a model: the one ``metadata["method"]`` names, else (exports written
    before manifests named their method) the one owning a key of ``metadata`` or a non-cosine space."""
    _load_built_in()
    name = metadata.get("method")
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    for method in _REGISTRY.values():
        if any(metadata.get(key) is not None for key in method.metadata_keys):
            return method
        if space.kind != COSINE and space.kind in method.space_kinds:
            return method
    return None


__all__ = ["DEFAULT_METHOD", "Inference", "available_methods", "get_method", "inference_of", "load_checked_model",
           "method_of", "method_sections", "model_inference", "register"]
