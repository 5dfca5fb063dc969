"""Training configuration: dataclasses, YAML files and command-line overrides.

A run's config is built in three layers: the defaults below, then a YAML file (``-c cfg.yaml``),
then overrides (``--lr 1e-4`` or ``--set lora.rank=8``). The effective config is saved beside
the run as ``config.yaml`` and inside ``safeclip.json``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import SafeclipError

# Safe-CLIP's eight loss terms, in the reference order, with the reference weights.
SAFE_CLIP_REFERENCE_WEIGHTS = {
    "text_safe_cos": 0.1,             # 1 - cos(T(t),  T0(t))
    "text_unsafe_cos": 0.1,           # 1 - cos(T(t*), T0(t))
    "image_safe_cos": 0.1,            # 1 - cos(V(v),  V0(v))
    "image_unsafe_cos": 0.2,          # 1 - cos(V(v*), V0(v))
    "text_safe_contrastive": 0.25,    # contrastive(T(t),  V0(v))
    "text_unsafe_contrastive": 0.25,  # contrastive(T(t*), V0(v))
    "image_safe_contrastive": 0.25,   # contrastive(V(v),  T0(t))
    "image_unsafe_contrastive": 0.5,  # contrastive(V(v*), T0(t))
}


# Settings that take one of a few values; the allowed values come from these types.
Towers = Literal["both", "text"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Normalization = Literal["sum", "none"]
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
class LossConfig:
    tau: float = 0.01
    weights: dict[str, float] = field(default_factory=lambda: dict(SAFE_CLIP_REFERENCE_WEIGHTS))
    # "sum": every weight is divided once by the sum of all eight configured weights, so a term
    # has the same scale whether or not the dataset has unsafe images. "none": used as given.
    normalization: Normalization = "sum"


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
    method: str = "safe-clip"
    base_model: str = "ViT-L-14-quickgelu"
    pretrained: str | None = "openai"
    output_dir: str = "runs/safe-clip"
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 128
    grad_accum_steps: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
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


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from nested dicts, rejecting unknown keys by name and bad values by
    :func:`validate_config`."""
    config = _build(TrainConfig, values, prefix="")
    validate_config(config)
    return config


# The smallest value of each bounded number (``max_steps`` may also be null: no limit).
_AT_LEAST = {"epochs": 1, "max_steps": 1, "batch_size": 1, "grad_accum_steps": 1, "checkpoint_every": 1,
             "log_every": 1, "warmup_steps": 0, "weight_decay": 0, "early_stopping_patience": 0,
             "data.num_workers": 0, "lora.rank": 1}
_POSITIVE = {"lr", "lora.alpha", "loss.tau"}


def validate_config(config: TrainConfig) -> None:
    """Raise SafeclipError, in one line naming the key, for the first value out of range or
    not among a setting's choices; nothing is loaded before this passes."""
    for key, value, hint in _settings(config):
        origin = typing.get_origin(hint)
        if origin is Literal and value not in typing.get_args(hint):
            allowed = ", ".join(map(str, typing.get_args(hint)))
            raise SafeclipError(f"config key '{key}' must be one of {allowed}, got {value!r}")
        if hint is bool and not isinstance(value, bool):
            raise SafeclipError(f"config key '{key}' must be true or false, got {value!r}")
        if value is not None and (key in _AT_LEAST or key in _POSITIVE):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SafeclipError(f"config key '{key}' must be a number, got {value!r}")
            if key in _POSITIVE and value <= 0:
                raise SafeclipError(f"config key '{key}' must be greater than 0, got {value!r}")
            if key in _AT_LEAST and value < _AT_LEAST[key]:
                hint_text = " (leave it unset for no limit)" if key == "max_steps" else ""
                raise SafeclipError(f"config key '{key}' must be at least {_AT_LEAST[key]}, got {value!r}{hint_text}")
    if not 0 <= config.lora.dropout < 1:
        raise SafeclipError(f"config key 'lora.dropout' must be in [0, 1), got {config.lora.dropout!r}")
    validate_loss_weights(config.loss.weights)


def validate_loss_weights(weights: dict[str, float]) -> dict[str, float]:
    """The eight Safe-CLIP weights as floats, in the reference order; each must be a number >= 0."""
    if not isinstance(weights, dict):
        raise SafeclipError(f"loss.weights: must be a mapping of term name to weight, got {weights!r}")
    known = list(SAFE_CLIP_REFERENCE_WEIGHTS)
    unknown = [name for name in weights if name not in SAFE_CLIP_REFERENCE_WEIGHTS]
    if unknown:
        raise SafeclipError(f"loss.weights: unknown term '{unknown[0]}' (known: {', '.join(known)})")
    missing = [name for name in known if name not in weights]
    if missing:
        raise SafeclipError(f"loss.weights: missing term '{missing[0]}' (set all eight; 0 disables a term)")
    for name in known:
        value = weights[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise SafeclipError(f"loss.weights.{name}: must be a number >= 0, got {value!r}")
    return {name: float(weights[name]) for name in known}


def _settings(config, prefix: str = ""):
    """(dotted key, value, type) of every leaf setting, nested configs included."""
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value):
            yield from _settings(value, f"{prefix}{item.name}.")
        else:
            yield f"{prefix}{item.name}", value, hints[item.name]


def _build(cls, values: dict[str, Any], prefix: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SafeclipError(f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in values.items():
        default = known[name].default_factory() if known[name].default_factory is not dataclasses.MISSING \
            else known[name].default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            kwargs[name] = _build(type(default), value, prefix=f"{prefix}{name}.")
        elif dataclasses.is_dataclass(default):
            raise SafeclipError(f"config key '{prefix}{name}' must be a mapping of its settings, got {value!r}")
        elif isinstance(default, dict) and isinstance(value, dict):
            kwargs[name] = {**default, **value}  # e.g. loss.weights: set only the terms you change
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
    validated once all three are applied."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(Path(path))
    merged = to_dict(_build(TrainConfig, values, prefix=""))
    for dotted, value in (overrides or {}).items():
        _set_dotted(merged, dotted, value)
    return from_dict(merged)


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
    from .models import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(config), sort_keys=False))
