"""open_clip with safeclip's own architectures (``configs/*.json``) registered, and CLIPs built from configs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .._utils.compat import import_open_clip
from ..errors import ModelLoadError

MODEL_CONFIG_DIR = Path(__file__).parent / "configs"
_configs_registered = False


def open_clip_module():
    """open_clip, imported once with safeclip's own architectures registered."""
    global _configs_registered
    open_clip = import_open_clip()
    if not _configs_registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _configs_registered = True
    return open_clip


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path}: cannot read JSON ({error})") from error


def build_model(model_cfg: dict[str, Any], preprocess_cfg: dict[str, Any] | None = None,
                device: str | torch.device = "cpu") -> torch.nn.Module:
    """A randomly initialised open_clip CLIP from a config dict (no download)."""
    open_clip_module()
    from open_clip.model import CLIP, CustomTextCLIP
    from open_clip.transform import PreprocessCfg

    cfg = dict(model_cfg)
    is_custom_text = "hf_model_name" in cfg.get("text_cfg", {}) or cfg.pop("custom_text", False)
    model_class = CustomTextCLIP if is_custom_text else CLIP
    model = model_class(**cfg, cast_dtype=None)
    default_cfg = asdict(PreprocessCfg(size=model.visual.image_size))
    model.visual.preprocess_cfg = {**default_cfg, **(preprocess_cfg or {})}
    return model.to(device)

