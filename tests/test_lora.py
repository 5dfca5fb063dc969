"""LoRA on real tiny open_clip models with real peft: placement, freezing, the frozen reference, merging."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from safeclip_sdk.methods.safe_clip.config import SafeClipConfig as LossConfig
from safeclip_sdk.training.config import LoraConfig
from safeclip_sdk.errors import SafeclipError
from safeclip_sdk.training.lora import FrozenReference, apply_lora, merge_lora, trainable_parameter_count
from safeclip_sdk.model.towers import DualEncoder, encode_image, encode_text
from safeclip_sdk.methods.safe_clip.losses import SafeClipEmbeddings, SafeClipLoss
from safeclip_sdk.model.folder import load_model, save_model_dir
from safeclip_sdk.model.architectures import open_clip_module

CAPTIONS = ["a dog on a sofa", "two people at a table", "a red car in the rain"]
UNSAFE_CAPTIONS = ["a dog covered in blood", "two people in a fist fight", "a burning car with a weapon"]


def _inputs(loaded):
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(len(CAPTIONS), 3, loaded.image_size, loaded.image_size, generator=generator)
    return images, loaded.tokenizer(CAPTIONS), loaded.tokenizer(UNSAFE_CAPTIONS)


def _is_lora_layer(module: nn.Module) -> bool:
    return isinstance(getattr(module, "lora_A", None), nn.ModuleDict)


def _adapted_modules(model: nn.Module) -> list[str]:
    """Names (relative to the CLIP) of the modules peft wrapped, excluding MHA's inner out_proj."""
    return [name.removeprefix("base_model.model.") for name, module in model.named_modules()
            if _is_lora_layer(module) and not name.endswith("attn.base_layer.out_proj")]


def _lora_size(module: nn.Module, rank: int) -> int:
    """LoRA parameters of one adapted layer: A (rank x in) + B (out x rank)."""
    if isinstance(module, nn.MultiheadAttention):  # fused q/k/v projection, then the output projection
        e = module.embed_dim
        return rank * (e + 3 * e) + rank * (e + e)
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return rank * module.in_channels * kh * kw + module.out_channels * rank
    return rank * (module.in_features + module.out_features)


def _randomise_lora(model: nn.Module) -> None:
    """LoRA's B starts at zero (a no-op adapter); give it values so merging has something to merge."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("towers", ["both", "text"])
def test_adapters_sit_in_the_requested_towers_and_only_they_train(tiny_model, towers):
    original = dict(copy.deepcopy(tiny_model.model).named_modules())
    config = LoraConfig(rank=4, alpha=4.0, targets=["attn", "c_fc", "c_proj", "conv1"], towers=towers)
    peft_model = apply_lora(tiny_model.model, config)

    adapted = _adapted_modules(peft_model)
    text = [name for name in adapted if name.startswith("transformer.resblocks.")]
    image = [name for name in adapted if name.startswith("visual.")]
    assert sorted(text) == sorted(f"transformer.resblocks.{i}.{layer}"
                                  for i in range(2) for layer in ("attn", "mlp.c_fc", "mlp.c_proj"))
    if towers == "both":
        assert sorted(image) == sorted(["visual.conv1"] + [f"visual.transformer.resblocks.{i}.{layer}" for i in range(2)
                                                           for layer in ("attn", "mlp.c_fc", "mlp.c_proj")])
    else:
        assert image == []
    assert len(adapted) == len(text) + len(image)

    trainable_names = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable_names and all(".lora_A." in name or ".lora_B." in name for name in trainable_names)
    trainable, total = trainable_parameter_count(peft_model)
    assert trainable == sum(_lora_size(original[name], config.rank) for name in adapted)
    assert total == sum(p.numel() for p in original[""].parameters()) + trainable


def test_attn_target_is_anchored_and_skips_attention_pooling(tiny_model):
    cfg = dict(tiny_model.model_cfg)
    cfg["vision_cfg"] = {**cfg["vision_cfg"], "attentional_pool": True, "attn_pooler_heads": 2}
    model = open_clip_module().CLIP(**cfg)
    assert isinstance(model.visual.attn_pool.attn, nn.MultiheadAttention)
    adapted = _adapted_modules(apply_lora(model, LoraConfig(rank=2, targets=["attn"])))
    assert sorted(adapted) == sorted(f"{tower}transformer.resblocks.{i}.attn"
                                     for tower in ("", "visual.") for i in range(2))


def test_frozen_reference_stays_original_while_lora_trains(tiny_model):
    images, safe_tokens, unsafe_tokens = _inputs(tiny_model)
    # frozen like the reference: nn.MultiheadAttention picks another kernel (1e-6 apart) when no weight needs grad
    untouched = copy.deepcopy(tiny_model.model).eval().requires_grad_(False)
    with torch.no_grad():
        original_text = untouched.encode_text(safe_tokens)
        original_image = untouched.encode_image(images)

    reference = FrozenReference(tiny_model.model)
    peft_model = apply_lora(tiny_model.model, LoraConfig(rank=4, alpha=8.0, dropout=0.1))
    encoder = DualEncoder(peft_model)
    trainer_state = nn.ModuleDict({"encoder": encoder, "reference": reference})
    trainer_state.train()  # what a training loop does to everything it owns
    assert encoder.training and not reference.training
    assert not any(module.training for module in reference.modules())
    assert not any(p.requires_grad for p in reference.parameters())

    lora_before = {name: p.detach().clone() for name, p in peft_model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    loss_fn = SafeClipLoss(LossConfig(tau=0.1))
    for _ in range(5):
        image_features, text_features = encoder(images=images, texts=torch.cat([safe_tokens, unsafe_tokens]))
        n = len(CAPTIONS)
        embeddings = SafeClipEmbeddings(text_safe=text_features[:n], text_unsafe=text_features[n:],
                                        ref_text_safe=reference.encode_text(safe_tokens),
                                        ref_image_safe=reference.encode_image(images), image_safe=image_features)
        loss, _ = loss_fn(embeddings)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    changed = [name for name, p in peft_model.named_parameters() if p.requires_grad
               and not torch.equal(p.detach(), lora_before[name])]
    assert len(changed) == len(lora_before)
    assert not any(p.grad is not None for p in reference.parameters())

    trainer_state.train()
    assert not reference.training
    assert torch.equal(reference.encode_text(safe_tokens), original_text)
    assert torch.equal(reference.encode_image(images), original_image)
    trainer_state.eval()
    with torch.no_grad():
        assert not torch.allclose(encode_text(peft_model, safe_tokens), original_text, atol=1e-3)
        assert not torch.allclose(encode_image(peft_model, images), original_image, atol=1e-3)


def test_reference_must_be_taken_before_lora(tiny_model):
    peft_model = apply_lora(tiny_model.model, LoraConfig(rank=2))
    for model in (peft_model, tiny_model.model):  # the original module now holds LoRA layers too
        with pytest.raises(SafeclipError, match="before apply_lora"):
            FrozenReference(model)


def test_text_only_lora_leaves_the_image_tower_exactly_as_it_was(tiny_model):
    images, safe_tokens, _ = _inputs(tiny_model)
    with torch.no_grad():
        original_image = tiny_model.model.encode_image(images)
    peft_model = apply_lora(tiny_model.model, LoraConfig(rank=4, towers="text"))
    _randomise_lora(peft_model)
    assert not any(p.requires_grad for p in peft_model.get_base_model().visual.parameters())
    with torch.no_grad():
        assert torch.equal(encode_image(peft_model, images), original_image)


def test_encode_helpers_agree_on_plain_peft_and_wrapped_models(tiny_model):
    images, tokens, _ = _inputs(tiny_model)
    with torch.no_grad():
        plain = (encode_image(tiny_model.model, images), encode_text(tiny_model.model, tokens))
        assert torch.equal(plain[1], tiny_model.model.encode_text(tokens, normalize=False))
        peft_model = apply_lora(tiny_model.model, LoraConfig(rank=2))
        _randomise_lora(peft_model)
        adapted = (encode_image(peft_model, images), encode_text(peft_model, tokens))
        assert not torch.allclose(adapted[1], plain[1], atol=1e-3)
        for wrapped in (DualEncoder(peft_model), nn.DataParallel(DualEncoder(peft_model))):
            assert torch.equal(encode_image(wrapped, images), adapted[0])
            assert torch.equal(encode_text(wrapped, tokens), adapted[1])
        image_features, text_features = DualEncoder(peft_model)(images=images, texts=tokens)
        assert torch.equal(image_features, adapted[0]) and torch.equal(text_features, adapted[1])
        assert DualEncoder(peft_model)(texts=tokens)[0] is None
        assert DualEncoder(peft_model)(images=images)[1] is None


def test_dual_encoder_trains_through_distributed_data_parallel(tiny_model, tmp_path):
    images, tokens, _ = _inputs(tiny_model)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                                         rank=0, world_size=1)
    try:
        peft_model = apply_lora(tiny_model.model, LoraConfig(rank=2, dropout=0.0))
        ddp = nn.parallel.DistributedDataParallel(DualEncoder(peft_model))
        image_features, text_features = ddp(images=images, texts=tokens)
        (image_features.square().sum() + text_features.square().sum()).backward()
        grads = [p.grad for name, p in peft_model.named_parameters() if "lora_A" in name]
        assert grads and all(g is not None for g in grads)
        # B starts at zero, so the gradient reaching it is what moves the adapter first
        assert all(p.grad.abs().sum() > 0 for name, p in peft_model.named_parameters() if "lora_B" in name)
        with torch.no_grad():
            assert torch.equal(encode_text(ddp, tokens), encode_text(peft_model, tokens))
    finally:
        torch.distributed.destroy_process_group()


def test_merged_model_is_a_plain_clip_that_saves_and_reloads(tiny_model, tmp_path):
    images, tokens, _ = _inputs(tiny_model)
    original_keys = set(tiny_model.model.state_dict())
    peft_model = apply_lora(tiny_model.model, LoraConfig(rank=4, targets=["attn", "c_fc", "c_proj", "conv1"]))
    _randomise_lora(peft_model)
    peft_model.eval()
    with torch.no_grad():
        adapted_text, adapted_image = encode_text(peft_model, tokens), encode_image(peft_model, images)

    merged = merge_lora(DualEncoder(peft_model))
    assert type(merged) is open_clip_module().CLIP
    assert set(merged.state_dict()) == original_keys
    assert not any(_is_lora_layer(module) for module in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged.encode_text(tokens), adapted_text, atol=1e-5, rtol=0)
        torch.testing.assert_close(merged.encode_image(images), adapted_image, atol=1e-5, rtol=0)

    out = save_model_dir(tmp_path / "merged", merged, tiny_model.model_cfg, tiny_model.preprocess_cfg)
    reloaded = load_model(str(out)).model
    with torch.no_grad():
        assert torch.equal(reloaded.encode_text(tokens), merged.encode_text(tokens))
        assert torch.equal(reloaded.encode_image(images), merged.encode_image(images))


def test_merge_rejects_a_model_without_adapters(tiny_model):
    with pytest.raises(SafeclipError, match="expects a model returned by apply_lora"):
        merge_lora(tiny_model.model)


@pytest.mark.parametrize("config, message", [
    (LoraConfig(targets=["query_key_value"]), "match no module of the text tower"),
    (LoraConfig(targets=["conv1"]), "match no module of the text tower"),
    (LoraConfig(towers="image"), "lora.towers: 'image' is not one of both, text"),
    (LoraConfig(targets=["out_proj"]), "inside nn.MultiheadAttention"),
    (LoraConfig(targets=["ln_1"]), "is a LayerNorm"),
    (LoraConfig(targets=[]), "lora.targets: must be a non-empty list"),
    (LoraConfig(rank=0), "lora.rank"),
    (LoraConfig(dropout=1.5), "lora.dropout"),
])
def test_bad_lora_config_gives_one_line_error(tiny_model, config, message):
    with pytest.raises(SafeclipError, match=message) as error:
        apply_lora(tiny_model.model, config)
    assert "\n" not in str(error.value)
    assert not any(_is_lora_layer(module) for module in tiny_model.model.modules())
