"""The safety methods, one sub-package each (in the way peft keeps one folder per tuner).

Every method registers a :class:`~safeclip_sdk.methods.base.Method` under its name; ``safeclip
train --method NAME``, config validation and the docs list what is registered here:

- ``safe-clip`` (:mod:`.safe_clip`): Safe-CLIP (Poppi et al., ECCV 2024);
- ``safer-clip`` (:mod:`.safer_clip`): SafeR-CLIP (Yousaf et al., AAAI 2026);
- ``hysac`` (:mod:`.hysac`): HySAC (Poppi et al., CVPR 2025).

A new method is a sub-package with a config dataclass and a ``Method`` subclass, registered with
:func:`register`; the shared trainer and ``safeclip train`` need no change.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import SafeclipError

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


__all__ = ["available_methods", "get_method", "method_sections", "register"]
