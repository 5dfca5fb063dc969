"""Export an open_clip CLIP as a Hugging Face ``transformers`` CLIPModel folder.

The folder loads with ``CLIPModel``, ``CLIPTextModel``, ``CLIPTextModelWithProjection``,
``CLIPImageProcessor`` and ``CLIPTokenizer`` ``from_pretrained``. That is how a Safe-CLIP text
encoder goes into a diffusers Stable Diffusion pipeline::

    pipe = StableDiffusionPipeline.from_pretrained(
        "CompVis/stable-diffusion-v1-4", text_encoder=CLIPTextModel.from_pretrained(out))

Only open_clip ``CLIP`` models whose computation CLIPModel can reproduce are exported; anything
else (a Hugging Face or timm tower, attentional pooling, layer scale, ...) raises ExportError
before a file is written.

The tokenizer files are open_clip's ``SimpleTokenizer`` vocabulary and merges. Input ids match
open_clip's up to the end-of-text token; after it ``CLIPTokenizer`` pads with ``<|endoftext|>``
(as the Stable Diffusion 1.x tokenizer does) where open_clip pads with 0. Text attention is causal,
so the pooled text embedding does not depend on the padding.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ExportError
from ..model.hf_convert import (HF_CONFIG, HF_PREPROCESSOR, HF_WEIGHTS, LEGACY_ARGMAX_EOS_ID, OPEN_CLIP_LAYER_NORM_EPS,
                                OPENAI_VOCAB_SIZE, open_clip_to_hf_state_dict)
from ..model.folder import LoadedModel, load_model
from ..model.architectures import open_clip_module
from .._utils.files import atomic_write, atomic_write_text

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
OPEN_CLIP_TO_HF_SPECIAL_TOKENS = {"<start_of_text>": BOS_TOKEN, "<end_of_text>": EOS_TOKEN}
# open_clip's evaluation transform resizes 'random' as bicubic.
INTERPOLATION_TO_PIL_RESAMPLE = {"bicubic": 3, "bilinear": 2, "random": 3}
CUSTOM_BLOCK_FLAGS = ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn",
                      "scale_fc")


def export_hf(model: str | Path | LoadedModel, out_dir: str | Path) -> Path:
    """Write ``model`` (a LoadedModel or any source :func:`load_model` accepts) to ``out_dir`` as a
    transformers CLIPModel folder: config.json, model.safetensors, preprocessor_config.json and
    CLIPTokenizer files. Returns ``out_dir``."""
    from safetensors.torch import save_file

    loaded = model if isinstance(model, LoadedModel) else load_model(str(model))
    text_cfg, vision_cfg = _exportable_tower_cfgs(loaded)
    tokenizer = _simple_tokenizer(text_cfg.context_length)
    config = _clip_config(loaded, text_cfg, vision_cfg, tokenizer)
    image_processor = _image_processor_config(loaded.preprocess_cfg, loaded.source)
    tokenizer_files = _tokenizer_files(tokenizer, text_cfg.context_length)
    state = open_clip_to_hf_state_dict(loaded.model.state_dict(), text_cfg.layers, vision_cfg.layers)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / HF_WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(out / HF_CONFIG, json.dumps(config, indent=2))
    atomic_write_text(out / HF_PREPROCESSOR, json.dumps(image_processor, indent=2))
    for name, text in tokenizer_files.items():
        atomic_write_text(out / name, text)
    logging.getLogger(__name__).info("exported Hugging Face CLIPModel folder %s", out)
    return out


def _exportable_tower_cfgs(loaded: LoadedModel):
    """The model's (CLIPTextCfg, CLIPVisionCfg), or ExportError listing what CLIPModel cannot express."""
    open_clip_module()
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    refuse = f"{loaded.source}: cannot export to a Hugging Face CLIPModel"
    if not isinstance(loaded.model, CLIP):
        raise ExportError(f"{refuse}: {type(loaded.model).__name__} is not an open_clip CLIP with its own "
                          f"text transformer (merge LoRA adapters before exporting)")
    text = CLIPTextCfg(**loaded.model_cfg.get("text_cfg", {}))
    vision = CLIPVisionCfg(**loaded.model_cfg.get("vision_cfg", {}))
    problems = _vision_problems(vision) + _text_problems(text)
    for tower_name, tower in (("vision", vision), ("text", text)):
        problems += [f"{tower_name} {problem}" for problem in _block_problems(tower)]
    if loaded.model.logit_bias is not None:
        problems.append("a logit bias (SigLIP-style), which CLIPModel has no parameter for")
    if problems:
        raise ExportError(f"{refuse}: {'; '.join(problems)}")
    return text, vision


def _vision_problems(vision) -> list[str]:
    if vision.timm_model_name:
        return [f"timm vision tower '{vision.timm_model_name}'"]
    if isinstance(vision.layers, (list, tuple)):
        return ["ResNet vision tower"]
    problems = []
    if vision.attentional_pool:
        problems.append("vision attentional pooling")
    # final_ln_after_pool is fine: with class-token pooling, LayerNorm of the token is the same either way.
    if vision.pool_type != "tok":
        problems.append(f"vision pool_type '{vision.pool_type}' (CLIPModel pools the class token)")
    if vision.no_ln_pre:
        problems.append("vision tower without ln_pre")
    if _square(vision.image_size) is None or _square(vision.patch_size) is None:
        problems.append(f"non-square image_size {vision.image_size} / patch_size {vision.patch_size}")
    if vision.width % vision.head_width:
        problems.append(f"vision width {vision.width} not divisible by head_width {vision.head_width}")
    return problems


def _text_problems(text) -> list[str]:
    if text.hf_model_name:
        return [f"Hugging Face text tower '{text.hf_model_name}'"]
    problems = []
    if text.embed_cls:
        problems.append("text CLS embedding")
    if text.no_causal_mask:
        problems.append("bidirectional text attention")
    if text.pool_type not in ("argmax", "eos"):
        problems.append(f"text pool_type '{text.pool_type}' (CLIPModel pools the end-of-text token)")
    elif text.pool_type == "eos" and text.eos_id == LEGACY_ARGMAX_EOS_ID:
        problems.append(f"text eos_id {LEGACY_ARGMAX_EOS_ID}, which CLIPModel reads as argmax pooling")
    if text.proj_type != "linear" or text.proj_bias:
        problems.append(f"text projection '{text.proj_type}'{' with bias' if text.proj_bias else ''}")
    if text.hf_tokenizer_name or text.tokenizer_kwargs:
        problems.append("a tokenizer other than open_clip's default SimpleTokenizer")
    elif text.vocab_size != OPENAI_VOCAB_SIZE:
        problems.append(f"text vocab_size {text.vocab_size} (the CLIP tokenizer has {OPENAI_VOCAB_SIZE})")
    return problems


def _block_problems(tower) -> list[str]:
    problems = []
    if tower.ls_init_value is not None:
        problems.append("layer scale")
    custom = [flag for flag in CUSTOM_BLOCK_FLAGS if getattr(tower, flag)]
    if custom or tower.block_type not in (None, "default"):
        problems.append(f"custom attention block ({', '.join(custom) or tower.block_type})")
    if tower.act_kwargs:
        problems.append(f"activation arguments {tower.act_kwargs}")
    if set(tower.norm_kwargs or {}) - {"eps"}:
        problems.append(f"LayerNorm arguments {tower.norm_kwargs}")
    return problems


def _square(size) -> int | None:
    if isinstance(size, int):
        return size
    height, width = size
    return int(height) if height == width else None


def _layer_norm_eps(tower) -> float:
    return (tower.norm_kwargs or {}).get("eps", OPEN_CLIP_LAYER_NORM_EPS)


def _simple_tokenizer(context_length: int):
    open_clip = open_clip_module()
    return open_clip.SimpleTokenizer(context_length=context_length)


def _clip_config(loaded: LoadedModel, text, vision, tokenizer) -> dict[str, Any]:
    hidden_act = "quick_gelu" if loaded.model_cfg.get("quick_gelu", False) else "gelu"
    embed_dim = loaded.model_cfg["embed_dim"]
    # open_clip's argmax pooling is CLIPModel's first-EOT pooling here: EOT is the largest id of the vocab.
    eos_token_id = text.eos_id if text.pool_type == "eos" else tokenizer.eot_token_id
    text_config = {
        "model_type": "clip_text_model",
        "vocab_size": text.vocab_size,
        "hidden_size": text.width,
        "intermediate_size": int(text.width * text.mlp_ratio),
        "projection_dim": embed_dim,
        "num_hidden_layers": text.layers,
        "num_attention_heads": text.heads,
        "max_position_embeddings": text.context_length,
        "hidden_act": hidden_act,
        "layer_norm_eps": _layer_norm_eps(text),
        "attention_dropout": 0.0,
        "bos_token_id": tokenizer.sot_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": tokenizer.eot_token_id,
    }
    vision_config = {
        "model_type": "clip_vision_model",
        "hidden_size": vision.width,
        "intermediate_size": int(vision.width * vision.mlp_ratio),
        "projection_dim": embed_dim,
        "num_hidden_layers": vision.layers,
        "num_attention_heads": vision.width // vision.head_width,
        "num_channels": 3,
        "image_size": _square(vision.image_size),
        "patch_size": _square(vision.patch_size),
        "hidden_act": hidden_act,
        "layer_norm_eps": _layer_norm_eps(vision),
        "attention_dropout": 0.0,
    }
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": embed_dim,
        "logit_scale_init_value": float(loaded.model.logit_scale.detach().reshape(())),
        "text_config": text_config,
        "vision_config": vision_config,
    }


def _image_processor_config(preprocess_cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """CLIPImageProcessor settings reproducing open_clip's evaluation transform."""
    refuse = f"{source}: cannot export the image preprocessing to CLIPImageProcessor"
    side = _square(preprocess_cfg["size"])
    resize_mode = preprocess_cfg.get("resize_mode", "shortest")
    interpolation = preprocess_cfg.get("interpolation", "bicubic")
    if side is None:
        raise ExportError(f"{refuse}: non-square size {preprocess_cfg['size']}")
    if resize_mode not in ("shortest", "squash"):
        raise ExportError(f"{refuse}: resize_mode '{resize_mode}' (supported: shortest, squash)")
    if interpolation not in INTERPOLATION_TO_PIL_RESAMPLE:
        raise ExportError(f"{refuse}: interpolation '{interpolation}'")
    square = {"height": side, "width": side}
    center_crop = resize_mode == "shortest"
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": side} if center_crop else square,
        "resample": INTERPOLATION_TO_PIL_RESAMPLE[interpolation],
        "do_center_crop": center_crop,
        "crop_size": square,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(preprocess_cfg["mean"]),
        "image_std": list(preprocess_cfg["std"]),
    }


def _tokenizer_files(tokenizer, context_length: int) -> dict[str, str]:
    """vocab.json, merges.txt and configs of a CLIPTokenizer equal to ``tokenizer`` (SimpleTokenizer)."""
    vocab = {OPEN_CLIP_TO_HF_SPECIAL_TOKENS.get(token, token): index
             for token, index in tokenizer.encoder.items()}
    merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.__getitem__)
    special_tokens = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
                      "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    tokenizer_config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": context_length,
        "do_lower_case": True,
        "add_prefix_space": False,
        "errors": "replace",
        **special_tokens,
    }
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        # The first line is a header that CLIPTokenizer skips, as in OpenAI's merges.txt.
        "merges.txt": "#version: 0.2\n" + "".join(f"{first} {second}\n" for first, second in merges),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
        "special_tokens_map.json": json.dumps(special_tokens, indent=2),
    }
