"""LoRA adapters (peft) on open_clip CLIP towers, and the frozen reference copy of the original model.

Targets are module-name suffixes inside the towers' transformer blocks (``attn`` is
``nn.MultiheadAttention``, which peft adapts natively on its fused q/k/v and output projections;
``c_fc`` / ``c_proj`` are the MLP layers), plus ``conv1``, the image tower's patch embedding.
They become one anchored regex over full module names, so e.g. ``attn`` never matches an
``attn_pool`` module.

``get_peft_model`` adapts the model in place: take :class:`FrozenReference` of the original
model BEFORE calling :func:`apply_lora` (the published Safe-CLIP code ran its "frozen" pass
through the model being trained; see methods.md section 6).
"""

from __future__ import annotations

import copy
import re

import torch
from torch import Tensor, nn

from .._utils.compat import ensure_torchvision
from ..errors import SafeclipError
from ..model.towers import unwrap_model
from .config import LoraConfig

ensure_torchvision()  # peft imports transformers, which imports torchvision
import peft  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402
from peft.tuners.lora.layer import MultiheadAttention as LoraMultiheadAttention  # noqa: E402

TOWERS = ("both", "text")
PATCH_EMBEDDING = "conv1"
# open_clip's CLIP keeps the text transformer at the root, CustomTextCLIP under `text.`
_TEXT_BLOCKS = r"(?:text\.)?transformer\.resblocks\.\d+"
_IMAGE_BLOCKS = r"visual\.transformer\.resblocks\.\d+"
_ADAPTABLE = (nn.Linear, nn.Conv2d, nn.MultiheadAttention)
_TOWER_LAYERS = {
    "text": "open_clip names its layers transformer.resblocks.N.attn / .mlp.c_fc / .mlp.c_proj",
    "image": "open_clip names its layers visual.transformer.resblocks.N.attn / .mlp.c_fc / .mlp.c_proj and "
             "visual.conv1; lora.towers=text leaves the image tower untouched",
}


class FrozenReference(nn.Module):
    """A deep copy of the ORIGINAL model, taken before LoRA is applied.

    It stays in eval mode forever (``train()`` is a no-op, also when a parent module calls it),
    its parameters do not require grad, and it encodes under ``torch.no_grad()``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if isinstance(model, peft.PeftModel) or any(isinstance(m, LoraLayer) for m in model.modules()):
            raise SafeclipError("FrozenReference needs the original model: create it before apply_lora()")
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenReference:
        return self

    @torch.no_grad()
    def encode_text(self, tokens: Tensor) -> Tensor:
        """T0(tokens): unnormalised projection output."""
        return self.model.encode_text(tokens, normalize=False)

    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        """V0(images): unnormalised projection output."""
        return self.model.encode_image(images, normalize=False)


def apply_lora(model: nn.Module, config: LoraConfig) -> peft.PeftModel:
    """Add LoRA adapters to ``model`` (in place) and freeze every other parameter.

    ``config.towers="both"`` adapts the text and the image transformer, ``"text"`` the text
    transformer only (the image tower gets no adapters). Raises :class:`SafeclipError` when the
    targets match no module of a requested tower or match a layer LoRA cannot act on.
    """
    pattern = _target_pattern(config)
    matched = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    _check_matches(model, matched, config)
    peft_config = peft.LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                                  target_modules=pattern, bias="none")
    peft_config._register_custom_module({nn.MultiheadAttention: ExactMultiheadAttention})
    was_training = model.training
    peft_model = peft.get_peft_model(model, peft_config)
    return peft_model.train(was_training)  # the new dropout layers start in train mode


class ExactMultiheadAttention(LoraMultiheadAttention):
    """peft's LoRA attention, leaving the frozen weights bit-for-bit unchanged by a forward.

    peft adds the adapters' delta into the frozen in/out projection weights before each forward
    and subtracts it afterwards; ``(w + d) - d`` is not ``w`` in floating point, so the frozen
    weights drift by a rounding error at every call (and a resumed run, which reloads them,
    would diverge from an uninterrupted one). This puts the original tensors back instead.
    """

    def forward(self, query: Tensor, *args, **kwargs):
        base = self.get_base_layer()
        out_proj = base.out_proj.get_base_layer()
        restore = not (self.merged or self.disable_adapters)
        in_weight, out_weight = base.in_proj_weight.data, out_proj.weight.data
        try:
            return super().forward(query, *args, **kwargs)
        finally:
            if restore:
                base.in_proj_weight.data = in_weight
                out_proj.weight.data = out_weight


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """Collapse the adapters into the base weights and return the plain open_clip model.

    Its state_dict has exactly the original model's keys, so ``save_model_dir`` writes a folder
    that open_clip's ``local-dir:`` loader reads. The peft model is consumed (merged in place)
    and the returned parameters keep ``requires_grad=False``.
    """
    model = unwrap_model(peft_model)
    if not isinstance(model, peft.PeftModel):
        raise SafeclipError(f"merge_lora expects a model returned by apply_lora, got {type(model).__name__}")
    return model.merge_and_unload()


def trainable_parameter_count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    parameters = list(model.parameters())
    return sum(p.numel() for p in parameters if p.requires_grad), sum(p.numel() for p in parameters)


def _target_pattern(config: LoraConfig) -> str:
    """The regex (matched by peft against full module names) selecting the LoRA targets."""
    _validate(config)
    block_targets = [t for t in config.targets if t != PATCH_EMBEDDING]
    towers = [_TEXT_BLOCKS] + ([_IMAGE_BLOCKS] if config.towers == "both" else [])
    alternatives = []
    if block_targets:
        suffixes = "|".join(re.escape(target) for target in block_targets)
        alternatives.append(rf"(?:{'|'.join(towers)})\.(?:[^.]+\.)*(?:{suffixes})")
    if PATCH_EMBEDDING in config.targets and config.towers == "both":
        alternatives.append(rf"visual\.{PATCH_EMBEDDING}")
    return "|".join(alternatives) or r"(?!)"  # (?!) matches nothing


def _validate(config: LoraConfig) -> None:
    if config.towers not in TOWERS:
        raise SafeclipError(f"lora.towers: '{config.towers}' is not one of {', '.join(TOWERS)}")
    if isinstance(config.rank, bool) or not isinstance(config.rank, int) or config.rank < 1:
        raise SafeclipError(f"lora.rank: must be a positive integer, got {config.rank!r}")
    if isinstance(config.alpha, bool) or not isinstance(config.alpha, (int, float)) or config.alpha <= 0:
        raise SafeclipError(f"lora.alpha: must be a positive number, got {config.alpha!r}")
    if isinstance(config.dropout, bool) or not isinstance(config.dropout, (int, float)) \
            or not 0 <= config.dropout < 1:
        raise SafeclipError(f"lora.dropout: must be in [0, 1), got {config.dropout!r}")
    if not isinstance(config.targets, list) or not config.targets \
            or not all(isinstance(t, str) and t for t in config.targets):
        raise SafeclipError(f"lora.targets: must be a non-empty list of module names, got {config.targets!r}")


def _check_matches(model: nn.Module, matched: list[str], config: LoraConfig) -> None:
    towers = {"text": _TEXT_BLOCKS}
    if config.towers == "both":
        towers["image"] = rf"{_IMAGE_BLOCKS}|visual\.{PATCH_EMBEDDING}$"
    for tower, pattern in towers.items():
        if not any(re.match(pattern, name) for name in matched):
            raise SafeclipError(f"lora.targets {config.targets} match no module of the {tower} tower "
                                f"({_TOWER_LAYERS[tower]})")
    modules = dict(model.named_modules())
    for name in matched:
        if not isinstance(modules[name], _ADAPTABLE):
            raise SafeclipError(f"lora.targets: '{name}' is a {type(modules[name]).__name__}; LoRA adapts "
                                f"{', '.join(t.__name__ for t in _ADAPTABLE)} layers")
        parent = name.rpartition(".")[0]
        while parent:
            if isinstance(modules[parent], nn.MultiheadAttention):
                raise SafeclipError(f"lora.targets: '{name}' lies inside nn.MultiheadAttention, whose forward "
                                    f"does not call it; target 'attn' instead")
            parent = parent.rpartition(".")[0]
