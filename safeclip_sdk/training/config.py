"""Training configuration: dataclasses, YAML files and command-line overrides.

A run's config is built in three layers: the defaults below, then a YAML file (``-c cfg.yaml``),
then overrides (``--lr 1e-4`` or ``--set lora.rank=8``). The effective config is saved beside
the run as ``config.yaml`` and inside ``safeclip.json``.

The settings shared by every method are the fields of :class:`TrainConfig`; the selected
method's own settings are a section named after it (``safe_clip:``, ``safer_clip:``, ``hysac:``;
``--set safer_clip.tau=0.02``), read into the method's config class (see
:mod:`safeclip_sdk.methods`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .._utils.files import atomic_write_text
from ..errors import SafeclipError
from ..methods import DEFAULT_METHOD, available_methods, get_method, method_sections

# Settings that take one of a few values; the allowed values come from these types.
Towers = Literal["both", "text"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LrSchedule = Literal["cosine", "constant"]


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.1
    # open_clip module names: `attn` is nn.MultiheadAttention (q/k/v and out projections),
    # c_fc / c_proj are the MLP layers; add `conv1` for the patch embedding.
    targets: list[str] = field(default_factory=lambda: ["attn", "c_fc", "c_proj"])
    towers: Towers = "both"


@dataclass
class DataConfig:
    train: str = ""
    val: str | None = None
    # ViSU: the COCO root holding train2017/ and val2017/; JSONL: the folder relative image paths
    # start from (default: the JSONL file's folder)
    image_root: str | None = None
    unsafe_image_root: str | None = None
    skip_bad: bool = False
    num_workers: int = 0


@dataclass
class TrainConfig:
    method: str = DEFAULT_METHOD
    base_model: str = "ViT-L-14-quickgelu"
    pretrained: str | None = "openai"
    output_dir: str = f"runs/{DEFAULT_METHOD}"
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 128
    grad_accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW's moment decay rates
    # "cosine": linear warm-up over `warmup_steps` optimizer steps, then a cosine decay to 0 at
    # the last step; "constant": the same warm-up, then `lr` throughout
    lr_schedule: LrSchedule = "cosine"
    warmup_steps: int = 0
    precision: Precision = "auto"  # auto: bf16/fp16 autocast on GPU, fp32 on CPU; or fp32, fp16, bf16
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    # Validation runs after each epoch; training stops when `early_stopping_metric` (lower is
    # better) has not improved for `early_stopping_patience` epochs (0 disables early stopping).
    early_stopping_metric: str = "val_loss"
    early_stopping_patience: int = 2
    resume: bool = False
    # End with an error when the verdict (the model measured against its base on the validation
    # split, see safeclip_sdk.evaluation.verdict) says the model is not safer; the model is kept.
    require_safer: bool = False
    # The selected method's settings (an instance of its config class), written as the method's
    # own section of the YAML file (its `section`)
    method_config: Any = None

    def __post_init__(self):
        if self.method_config is None:
            method = _registered(self.method)
            if method is not None:
                self.method_config = method.config_class()


def _registered(name: Any):
    """The method class registered as ``name``, or None (validation reports unknown names)."""
    return get_method(name) if isinstance(name, str) and name in available_methods() else None


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """Nested plain values; the method's settings under its section name, right after ``lora``."""
    values: dict[str, Any] = {}
    method = _registered(config.method)
    for item in dataclasses.fields(config):
        if item.name == "method_config":
            continue
        value = getattr(config, item.name)
        values[item.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        if item.name == "lora" and method is not None and dataclasses.is_dataclass(config.method_config):
            values[method.section] = dataclasses.asdict(config.method_config)
    return values


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from nested dicts, rejecting unknown keys by name and bad values by
    :func:`validate_config`."""
    config = _build_train_config(values)
    validate_config(config)
    return config


def _build_train_config(values: dict[str, Any]) -> TrainConfig:
    """:class:`TrainConfig` from nested dicts. The selected method's section becomes
    ``method_config``; sections of the other registered methods are ignored, so one file can hold
    the settings of several methods."""
    values = dict(values)
    sections = method_sections()
    found = {key: values.pop(key) for key in list(values) if key in sections}
    config = _build(TrainConfig, values, prefix="", hidden={"method_config"}, extra_known=sections)
    method = _registered(config.method)
    if method is None:
        return config
    mine = [key for key in found if sections[key] is method]
    if len(mine) > 1:
        raise SafeclipError(f"config sections '{mine[0]}' and '{mine[1]}' both set method {method.name}; keep one")
    if mine:
        key = mine[0]
        if not isinstance(found[key], dict):
            raise SafeclipError(f"config key '{key}' must be a mapping of its settings, got {found[key]!r}")
        config.method_config = _build(method.config_class, found[key], prefix=f"{method.section}.")
    return config


# The smallest value of each bounded number (``max_steps`` may also be null: no limit).
_AT_LEAST = {"epochs": 1, "max_steps": 1, "batch_size": 1, "grad_accum_steps": 1, "checkpoint_every": 1,
             "log_every": 1, "warmup_steps": 0, "weight_decay": 0, "early_stopping_patience": 0,
             "data.num_workers": 0, "lora.rank": 1}
_POSITIVE = {"lr", "lora.alpha"}


def validate_config(config: TrainConfig) -> None:
    """Raise SafeclipError, in one line naming the key, for the first value out of range or
    not among a setting's choices; nothing is loaded before this passes.

    A method's config class adds its own bounds (class attributes ``AT_LEAST`` and ``POSITIVE``,
    keys relative to its section) and may check the rest in ``validate(section)``.
    """
    method = _registered(config.method)
    if method is None:
        raise SafeclipError(f"config key 'method' must be one of {', '.join(available_methods())}, "
                            f"got {config.method!r}")
    if not isinstance(config.method_config, method.config_class):
        raise SafeclipError(f"method_config must be a {method.config_class.__name__} for method {method.name}, "
                            f"got {type(config.method_config).__name__}")
    at_least, positive = dict(_AT_LEAST), set(_POSITIVE)
    at_least.update({f"{method.section}.{key}": value
                     for key, value in getattr(method.config_class, "AT_LEAST", {}).items()})
    positive.update(f"{method.section}.{key}" for key in getattr(method.config_class, "POSITIVE", set()))
    for key, value, hint in [*_settings(config), *_settings(config.method_config, f"{method.section}.")]:
        _check_setting(key, value, hint, at_least, positive)
    if not 0 <= config.lora.dropout < 1:
        raise SafeclipError(f"config key 'lora.dropout' must be in [0, 1), got {config.lora.dropout!r}")
    betas = config.betas
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas):
        raise SafeclipError(f"config key 'betas' must be two numbers in [0, 1), got {betas!r}")
    validate = getattr(config.method_config, "validate", None)
    if validate is not None:
        validate(method.section)


def _check_setting(key: str, value: Any, hint: Any, at_least: dict[str, float], positive: set[str]) -> None:
    origin = typing.get_origin(hint)
    if origin is Literal and value not in typing.get_args(hint):
        allowed = ", ".join(map(str, typing.get_args(hint)))
        raise SafeclipError(f"config key '{key}' must be one of {allowed}, got {value!r}")
    if hint is bool and not isinstance(value, bool):
        raise SafeclipError(f"config key '{key}' must be true or false, got {value!r}")
    if value is not None and (key in at_least or key in positive):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SafeclipError(f"config key '{key}' must be a number, got {value!r}")
        if key in positive and value <= 0:
            raise SafeclipError(f"config key '{key}' must be greater than 0, got {value!r}")
        if key in at_least and value < at_least[key]:
            hint_text = " (leave it unset for no limit)" if key == "max_steps" else ""
            raise SafeclipError(f"config key '{key}' must be at least {at_least[key]}, got {value!r}{hint_text}")


def _settings(config, prefix: str = ""):
    """(dotted key, value, type) of every leaf setting, nested configs included (not the method's)."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        if item.name == "method_config":
            continue
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            yield from _settings(value, f"{prefix}{item.name}.")
        else:
            yield f"{prefix}{item.name}", value, hints[item.name]


def _build(cls, values: dict[str, Any], prefix: str, hidden: set[str] = frozenset(), extra_known=()):
    known = {f.name: f for f in dataclasses.fields(cls) if f.name not in hidden}
    unknown = sorted(set(values) - set(known))
    if unknown:
        names = ", ".join(sorted([*known, *extra_known]))
        raise SafeclipError(f"unknown config key '{prefix}{unknown[0]}' (known: {names})")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING \
            else known[name].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = _build(type(default), value, prefix=f"{prefix}{name}.")
        elif dataclasses.is_dataclass(default):
            raise SafeclipError(f"config key '{prefix}{name}' must be a mapping of its settings, got {value!r}")
        elif isinstance(default, dict) and isinstance(value, dict):
            kwargs[name] = {**default, **value}  # e.g. safe_clip.weights: set only the terms you change
        else:
            kwargs[name] = _coerce(value, default, known[name].type, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, annotation: str, key: str) -> Any:
    """Numbers as their field's type: YAML 1.1 reads ``1e-4`` as a string, users type it anyway."""
    if default is None and annotation in ("int | None", "float | None"):
        default = 0 if annotation.startswith("int") else 0.0
    if isinstance(default, bool) or value is None or not isinstance(default, (int, float)):
        return value
    if isinstance(value, bool):
        raise SafeclipError(f"config key '{key}' must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SafeclipError(f"config key '{key}' must be a number, got {value!r}") from None
    if isinstance(default, int):
        if not number.is_integer():
            raise SafeclipError(f"config key '{key}' must be a whole number, got {value!r}")
        return int(number)
    return number


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then ``overrides`` (dotted keys: ``{"lora.rank": 8}``),
    validated once all three are applied. An overridden ``method`` applies first, so
    ``{"method": "hysac", "hysac.curv_init": 2.0}`` sets a key of the method it selects."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(Path(path))
    overrides = dict(overrides or {})
    if "method" in overrides:
        values = {**values, "method": overrides.pop("method")}
    merged = to_dict(_build_train_config(values))
    for dotted, value in overrides.items():
        _set_dotted(merged, _canonical_key(dotted, merged.get("method")), value)
    return from_dict(merged)


def _canonical_key(dotted: str, method_name: Any) -> str:
    """``dotted`` with an old section name replaced by the current one (``loss.tau`` ->
    ``safe_clip.tau``); a key of another method's section is a one-line error."""
    head, sep, rest = dotted.partition(".")
    owner = method_sections().get(head) if sep else None
    if owner is None:
        return dotted
    if owner.name != method_name:
        raise SafeclipError(f"config key '{dotted}' belongs to method {owner.name}, but this run trains "
                            f"{method_name} (select it with --method {owner.name})")
    return f"{owner.section}.{rest}"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SafeclipError(f"{path}: cannot read config ({error.strerror or error})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise SafeclipError(f"{path}:{line}: config is not UTF-8 text (byte {raw[error.start]:#04x})") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise SafeclipError(f"{path}{_yaml_position(error)}: invalid YAML ({_yaml_problem(error)})") from None
    if not isinstance(values, dict):
        raise SafeclipError(f"{path}: a config file must be a YAML mapping")
    return values


def _yaml_position(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def _yaml_problem(error: yaml.YAMLError) -> str:
    parts = [getattr(error, "context", None), getattr(error, "problem", None)]
    return ", ".join(part for part in parts if part) or str(error).splitlines()[0]


def parse_override(text: str) -> tuple[str, Any]:
    """``"lora.rank=8"`` -> ``("lora.rank", 8)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise SafeclipError(f"override '{text}' must look like key.path=value")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise SafeclipError(f"override '{text}': invalid YAML value ({_yaml_problem(error)})") from None


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = values
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise SafeclipError(f"unknown config key '{dotted}'")
        node = node[part]
    if leaf not in node:
        raise SafeclipError(f"unknown config key '{dotted}'")
    node[leaf] = value



def save_config(config: TrainConfig, path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(config), sort_keys=False))
