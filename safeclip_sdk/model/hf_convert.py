"""Hugging Face ``transformers`` CLIPModel <-> open_clip CLIP: configs and weight names.

The conversion is done by hand so that loading a CLIPModel folder does not need transformers.
Both models compute the same function; only the parameter layout differs:

- HF keeps separate q/k/v projections, open_clip one fused ``attn.in_proj_weight`` (q, k, v);
- HF projections are ``nn.Linear`` (``[out, in]``), open_clip's are matrices (``[in, out]``);
- HF pools text on the first ``eos_token_id``, except for the legacy ``eos_token_id == 2``
  configs, which pool on the argmax of the token ids like open_clip's default ``argmax``.
  open_clip's ``pool_type="eos"`` reproduces the first form exactly;
- a LayerNorm eps other than open_clip's 1e-5 goes into ``norm_kwargs``.

The tokenizer of a converted model is open_clip's ``SimpleTokenizer`` (the OpenAI CLIP BPE
vocabulary, 49408 tokens), which is what every OpenAI-vocabulary CLIPModel uses.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ModelLoadError
from .architectures import build_model, open_clip_module, read_json

HF_CONFIG = "config.json"
HF_WEIGHTS = "model.safetensors"
HF_WEIGHTS_INDEX = "model.safetensors.index.json"
HF_PICKLE_WEIGHTS = "pytorch_model.bin"
HF_PREPROCESSOR = "preprocessor_config.json"

OPEN_CLIP_LAYER_NORM_EPS = 1e-5
OPENAI_VOCAB_SIZE = 49408
LEGACY_ARGMAX_EOS_ID = 2  # HF CLIP configs with this eos_token_id pool text on argmax(token ids)

HF_ACTIVATION_IS_QUICK_GELU = {"quick_gelu": True, "gelu": False}
PIL_RESAMPLE_TO_INTERPOLATION = {2: "bilinear", 3: "bicubic"}

# Defaults of transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig, for keys a config omits.
HF_TEXT_DEFAULTS = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "eos_token_id": 49407,
}
HF_VISION_DEFAULTS = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
HF_PROJECTION_DIM_DEFAULT = 512

# Per-block parameters: (HF name under `encoder.layers.{i}.`, open_clip name under `resblocks.{i}.`).
_BLOCK_RENAMES = [
    ("layer_norm1", "ln_1"),
    ("self_attn.out_proj", "attn.out_proj"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
]
# Whole-model parameters: (HF name, open_clip name, stored transposed).
_TOP_RENAMES = [
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight", False),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding", False),
    ("text_model.final_layer_norm.weight", "ln_final.weight", False),
    ("text_model.final_layer_norm.bias", "ln_final.bias", False),
    ("text_projection.weight", "text_projection", True),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding", False),
    ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight", False),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding", False),
    ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight", False),
    ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias", False),
    ("vision_model.post_layernorm.weight", "visual.ln_post.weight", False),
    ("vision_model.post_layernorm.bias", "visual.ln_post.bias", False),
    ("visual_projection.weight", "visual.proj", True),
]
_TOWERS = [("text_model.encoder.layers", "transformer.resblocks"),
           ("vision_model.encoder.layers", "visual.transformer.resblocks")]


def _renames(text_layers: int, vision_layers: int) -> list[tuple[str, str, bool]]:
    """Every one-to-one (HF name, open_clip name, transposed) pair of a CLIP with these depths."""
    pairs = list(_TOP_RENAMES)
    for (hf_tower, oc_tower), layers in zip(_TOWERS, (text_layers, vision_layers)):
        for i in range(layers):
            for hf_name, oc_name in _BLOCK_RENAMES:
                for kind in ("weight", "bias"):
                    hf_key, oc_key = f"{hf_tower}.{i}.{hf_name}.{kind}", f"{oc_tower}.{i}.{oc_name}.{kind}"
                    pairs.append((hf_key, oc_key, False))
    return pairs


def _fused_attention_names(text_layers: int, vision_layers: int):
    """(HF q/k/v prefix, open_clip in_proj prefix) of every attention layer."""
    for (hf_tower, oc_tower), layers in zip(_TOWERS, (text_layers, vision_layers)):
        for i in range(layers):
            yield f"{hf_tower}.{i}.self_attn", f"{oc_tower}.{i}.attn.in_proj_"


def hf_to_open_clip_state_dict(hf_state: dict[str, Tensor], text_layers: int,
                               vision_layers: int, source: str = "weights") -> dict[str, Tensor]:
    """Rename and reshape a CLIPModel state dict into open_clip CLIP names (fp32)."""

    def take(name: str) -> Tensor:
        if name not in hf_state:
            raise ModelLoadError(f"{source}: missing weight '{name}' (not a complete CLIPModel checkpoint)")
        return hf_state[name].to(torch.float32)

    state = {}
    for hf_name, oc_name, transposed in _renames(text_layers, vision_layers):
        tensor = take(hf_name)
        state[oc_name] = tensor.t().contiguous() if transposed else tensor
    for hf_prefix, oc_prefix in _fused_attention_names(text_layers, vision_layers):
        for kind in ("weight", "bias"):
            state[oc_prefix + kind] = torch.cat([take(f"{hf_prefix}.{p}_proj.{kind}") for p in "qkv"])
    state["logit_scale"] = take("logit_scale").reshape(())
    return state


def open_clip_to_hf_state_dict(oc_state: dict[str, Tensor], text_layers: int,
                               vision_layers: int) -> dict[str, Tensor]:
    """The inverse of :func:`hf_to_open_clip_state_dict`: open_clip CLIP names to CLIPModel names."""
    state = {}
    for hf_name, oc_name, transposed in _renames(text_layers, vision_layers):
        tensor = oc_state[oc_name]
        state[hf_name] = tensor.t() if transposed else tensor
    for hf_prefix, oc_prefix in _fused_attention_names(text_layers, vision_layers):
        for kind in ("weight", "bias"):
            for proj, part in zip("qkv", oc_state[oc_prefix + kind].chunk(3)):
                state[f"{hf_prefix}.{proj}_proj.{kind}"] = part
    state["logit_scale"] = oc_state["logit_scale"].reshape(())
    return {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in state.items()}


def _tower_config(config: dict[str, Any], name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    # Configs written by transformers < 4.28 may keep overrides in `text_config_dict`.
    return {**defaults, **(config.get(name) or {}), **(config.get(f"{name}_dict") or {})}


def _mlp_ratio(width: int, intermediate: int) -> float:
    """A ratio for which open_clip's ``int(width * ratio)`` gives back ``intermediate`` exactly."""
    ratio = intermediate / width
    if int(width * ratio) < intermediate:  # float rounding fell just below the integer
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def _norm_kwargs(eps: float) -> dict[str, Any]:
    return {} if eps == OPEN_CLIP_LAYER_NORM_EPS else {"norm_kwargs": {"eps": eps}}


def hf_config_to_open_clip(config: dict[str, Any], source: str = HF_CONFIG) -> dict[str, Any]:
    """An open_clip ``model_cfg`` computing the same function as this CLIPModel ``config.json``."""
    text = _tower_config(config, "text_config", HF_TEXT_DEFAULTS)
    vision = _tower_config(config, "vision_config", HF_VISION_DEFAULTS)
    activations = {text["hidden_act"], vision["hidden_act"]}
    unsupported = activations - HF_ACTIVATION_IS_QUICK_GELU.keys()
    if unsupported:
        raise ModelLoadError(f"{source}: hidden_act {sorted(unsupported)} is not supported "
                             f"(open_clip CLIP has {sorted(HF_ACTIVATION_IS_QUICK_GELU)})")
    if len(activations) > 1:
        raise ModelLoadError(f"{source}: text and vision towers use different activations "
                             f"({text['hidden_act']} / {vision['hidden_act']}); open_clip CLIP uses one")
    if vision["num_channels"] != 3:
        raise ModelLoadError(f"{source}: vision_config.num_channels is {vision['num_channels']}, "
                             f"open_clip needs 3")
    eos_token_id = text["eos_token_id"]
    if not isinstance(eos_token_id, int):
        raise ModelLoadError(f"{source}: text_config.eos_token_id must be one integer, "
                             f"got {eos_token_id!r}")
    for tower_name, tower in (("text_config", text), ("vision_config", vision)):
        if tower["hidden_size"] % tower["num_attention_heads"]:
            raise ModelLoadError(f"{source}: {tower_name}.hidden_size {tower['hidden_size']} is not "
                                 f"divisible by num_attention_heads {tower['num_attention_heads']}")

    text_cfg = {
        "context_length": text["max_position_embeddings"],
        "vocab_size": text["vocab_size"],
        "width": text["hidden_size"],
        "heads": text["num_attention_heads"],
        "layers": text["num_hidden_layers"],
        "mlp_ratio": _mlp_ratio(text["hidden_size"], text["intermediate_size"]),
        **_norm_kwargs(text["layer_norm_eps"]),
    }
    if eos_token_id != LEGACY_ARGMAX_EOS_ID:
        text_cfg.update(pool_type="eos", eos_id=eos_token_id)
    if text["vocab_size"] != OPENAI_VOCAB_SIZE:
        logging.getLogger(__name__).warning(
            "%s: vocab_size %d is not the OpenAI CLIP vocabulary; the model's tokenizer will be open_clip's "
            "SimpleTokenizer, which does not match it", source, text["vocab_size"])
    vision_cfg = {
        "image_size": vision["image_size"],
        "patch_size": vision["patch_size"],
        "width": vision["hidden_size"],
        "layers": vision["num_hidden_layers"],
        "head_width": vision["hidden_size"] // vision["num_attention_heads"],
        "mlp_ratio": _mlp_ratio(vision["hidden_size"], vision["intermediate_size"]),
        **_norm_kwargs(vision["layer_norm_eps"]),
    }
    return {
        "embed_dim": config.get("projection_dim", HF_PROJECTION_DIM_DEFAULT),
        "quick_gelu": HF_ACTIVATION_IS_QUICK_GELU[text["hidden_act"]],
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }


def _height_width(value: Any, key: str, source: Path) -> list[int]:
    """An image size as HF configs write it (int, [h, w], {"height", "width"} or {"shortest_edge"}),
    as open_clip's ``[height, width]``."""
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return [int(side) for side in value]
    if isinstance(value, dict) and "height" in value and "width" in value:
        return [int(value["height"]), int(value["width"])]
    if isinstance(value, dict) and "shortest_edge" in value:
        return [int(value["shortest_edge"])] * 2
    raise ModelLoadError(f"{source}: cannot read '{key}' = {value!r}")


def hf_preprocessor_to_open_clip(preprocessor: dict[str, Any] | None, image_size: int | list[int],
                                 source: Path) -> dict[str, Any]:
    """open_clip's ``preprocess_cfg`` for a CLIPImageProcessor config (CLIP defaults when absent)."""
    open_clip_module()
    from open_clip.transform import PreprocessCfg

    overrides: dict[str, Any] = {"size": _height_width(image_size, "image_size", source)}
    if preprocessor:
        if "image_mean" in preprocessor:
            overrides["mean"] = tuple(preprocessor["image_mean"])
        if "image_std" in preprocessor:
            overrides["std"] = tuple(preprocessor["image_std"])
        center_crop = preprocessor.get("do_center_crop", True)
        if center_crop and "crop_size" in preprocessor:
            overrides["size"] = _height_width(preprocessor["crop_size"], "crop_size", source)
        elif not center_crop and "size" in preprocessor:
            overrides["size"] = _height_width(preprocessor["size"], "size", source)
            overrides["resize_mode"] = "squash"
        resample = preprocessor.get("resample", 3)
        if resample not in PIL_RESAMPLE_TO_INTERPOLATION:
            raise ModelLoadError(f"{source}: resample={resample} is not supported "
                                 f"(open_clip resizes with bilinear (2) or bicubic (3))")
        overrides["interpolation"] = PIL_RESAMPLE_TO_INTERPOLATION[resample]
    cfg = asdict(PreprocessCfg(**overrides))
    return {key: list(value) if isinstance(value, tuple) else value for key, value in cfg.items()}


def read_hf_weights(path: Path) -> dict[str, Tensor]:
    """The state dict of a transformers model folder: safetensors (single or sharded) or, as a
    last resort, ``pytorch_model.bin`` read with ``torch.load(weights_only=True)`` (no unpickling)."""
    if (path / HF_WEIGHTS).is_file():
        return _read_safetensors([path / HF_WEIGHTS])
    if (path / HF_WEIGHTS_INDEX).is_file():
        weight_map = read_json(path / HF_WEIGHTS_INDEX).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{path / HF_WEIGHTS_INDEX}: missing 'weight_map'")
        return _read_safetensors([path / name for name in dict.fromkeys(weight_map.values())])
    if (path / HF_PICKLE_WEIGHTS).is_file():
        return _read_torch_weights(path / HF_PICKLE_WEIGHTS)
    raise ModelLoadError(f"{path}: no weights ({HF_WEIGHTS}, {HF_WEIGHTS_INDEX} or {HF_PICKLE_WEIGHTS})")


def _read_safetensors(files: list[Path]) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except (SafetensorError, OSError) as error:
            raise ModelLoadError(f"{file}: cannot read safetensors ({error})") from error
    return state


def _read_torch_weights(file: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        reason = f"{type(error).__name__}: {next(iter(str(error).splitlines()), '')}"
        raise ModelLoadError(f"{file}: cannot read weights ({reason})") from error
    if not isinstance(state, dict):
        raise ModelLoadError(f"{file}: holds a {type(state).__name__}, not a state dict")
    return state


def _check_shapes(state: dict[str, Tensor], model_cfg: dict[str, Any], source: Path) -> None:
    """Compare every converted tensor with the shape the config implies (model built on 'meta')."""
    with torch.device("meta"):
        expected = build_model(model_cfg, device="meta").state_dict()
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ModelLoadError(f"{source}: weight for open_clip '{name}' has shape {tuple(tensor.shape)}, "
                                 f"config.json implies {tuple(expected[name].shape)}")


def load_hf_clip_dir(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
    """Read a transformers CLIPModel folder as (open_clip model_cfg, preprocess_cfg, state_dict).

    Needs ``config.json`` and weights; ``preprocessor_config.json`` is optional (CLIP's defaults).
    Does not import transformers.
    """
    path = Path(path)
    config = read_json(path / HF_CONFIG)
    model_cfg = hf_config_to_open_clip(config, str(path / HF_CONFIG))
    preprocessor_path = path / HF_PREPROCESSOR
    preprocessor = read_json(preprocessor_path) if preprocessor_path.is_file() else None
    preprocess_cfg = hf_preprocessor_to_open_clip(preprocessor, model_cfg["vision_cfg"]["image_size"],
                                                  preprocessor_path)
    hf_state = read_hf_weights(path)
    state = hf_to_open_clip_state_dict(hf_state, model_cfg["text_cfg"]["layers"],
                                       model_cfg["vision_cfg"]["layers"], source=str(path))
    _check_shapes(state, model_cfg, path)
    return model_cfg, preprocess_cfg, state
