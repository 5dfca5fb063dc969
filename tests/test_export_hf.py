"""The `--hf` export: an open_clip CLIP written as a transformers CLIPModel folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from safeclip_sdk import ExportError, LoadedModel, load_model
from safeclip_sdk._utils.compat import ensure_torchvision
from safeclip_sdk.export.hf import export_hf
from safeclip_sdk.model.hf_convert import load_hf_clip_dir
from safeclip_sdk.model.architectures import build_model

pytest.importorskip("transformers")
ensure_torchvision()
from transformers import (  # noqa: E402
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

pytestmark = pytest.mark.slow

CAPTIONS = [
    "A photo of a CAT!!",
    "Hello, World... it's 3:45pm; the dog's toy (RED) costs $5?",
    "  two   spaces,\ttabs\nand newlines  ",
    "a very long caption that repeats itself " * 8,  # longer than the 32-token context
]


def perturbed(loaded: LoadedModel) -> LoadedModel:
    """open_clip starts LayerNorms at 1 and biases at 0: perturb them so every mapping shows."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return loaded


def variant(tiny_model: LoadedModel, **changes) -> LoadedModel:
    """The tiny architecture with config changes (top-level keys, or `text_cfg`/`vision_cfg` updates)."""
    cfg = json.loads(json.dumps(tiny_model.model_cfg))
    for key, value in changes.items():
        if key in ("text_cfg", "vision_cfg"):
            cfg[key].update(value)
        else:
            cfg[key] = value
    torch.manual_seed(0)
    model = build_model(cfg, tiny_model.preprocess_cfg).eval()
    return LoadedModel(model, cfg, dict(tiny_model.preprocess_cfg), "safeclip-tiny-variant")


@pytest.fixture(params=["gelu", "quick_gelu_eps"])
def exported(request, tiny_model, tmp_path):
    """(open_clip model, exported folder) for the tiny model and a QuickGELU / LayerNorm-eps variant."""
    if request.param == "gelu":
        loaded = tiny_model
    else:
        eps = {"norm_kwargs": {"eps": 1e-3}}
        loaded = variant(tiny_model, quick_gelu=True, text_cfg=eps, vision_cfg=eps)
    loaded = perturbed(loaded)
    return loaded, export_hf(loaded, tmp_path / "hf")


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def features(output) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features, 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_clip_model_embeddings_match_open_clip(exported):
    loaded, folder = exported
    hf_model = CLIPModel.from_pretrained(folder).eval()
    ids = loaded.tokenizer(CAPTIONS)
    side = loaded.image_size
    pixels = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pairs = [
            (loaded.model.encode_text(ids), features(hf_model.get_text_features(input_ids=ids))),
            (loaded.model.encode_image(pixels), features(hf_model.get_image_features(pixel_values=pixels))),
        ]
    for open_clip_embeds, hf_embeds in pairs:
        assert cosine(open_clip_embeds, hf_embeds).min() >= 0.9999
        torch.testing.assert_close(hf_embeds, open_clip_embeds, atol=1e-5, rtol=0)
    assert hf_model.logit_scale.item() == pytest.approx(loaded.model.logit_scale.item())


def test_text_model_gives_the_hidden_states_diffusers_consumes(exported):
    loaded, folder = exported
    model = loaded.model
    ids = loaded.tokenizer(CAPTIONS)
    text_model = CLIPTextModel.from_pretrained(folder).eval()
    with_projection = CLIPTextModelWithProjection.from_pretrained(folder).eval()  # SDXL's second encoder
    with torch.no_grad():
        tokens = model.token_embedding(ids) + model.positional_embedding
        expected = model.ln_final(model.transformer(tokens, attn_mask=model.attn_mask))
        torch.testing.assert_close(text_model(input_ids=ids).last_hidden_state, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(with_projection(input_ids=ids).text_embeds, model.encode_text(ids),
                                   atol=1e-5, rtol=0)


def test_tokenizer_matches_open_clip(tiny_model, tmp_path):
    folder = export_hf(tiny_model, tmp_path)
    hf_tokenizer = CLIPTokenizer.from_pretrained(folder)
    assert hf_tokenizer.model_max_length == tiny_model.context_length
    open_clip_ids = tiny_model.tokenizer(CAPTIONS)
    hf_ids = hf_tokenizer(CAPTIONS, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    assert hf_ids.shape == open_clip_ids.shape == (len(CAPTIONS), tiny_model.context_length)
    eot = hf_tokenizer.eos_token_id
    for ours, theirs in zip(open_clip_ids, hf_ids):
        end = int((ours == eot).nonzero()[0])
        assert int((theirs == eot).nonzero()[0]) == end
        assert torch.equal(ours[: end + 1], theirs[: end + 1])
        # After EOT: open_clip pads with 0, CLIPTokenizer with EOT (as Stable Diffusion 1.x does).
        assert (ours[end + 1:] == 0).all() and (theirs[end + 1:] == eot).all()
    assert int(open_clip_ids[-1, -1]) == eot  # the long caption is truncated with EOT last


def test_image_processor_matches_open_clip_preprocess(tiny_model, tmp_path):
    folder = export_hf(tiny_model, tmp_path)
    processor = CLIPImageProcessor.from_pretrained(folder)
    rng = np.random.default_rng(0)
    side = tiny_model.image_size
    for shape, atol in (((side, side, 3), 1e-5), ((80, 120, 3), 0.1)):  # resizers differ slightly
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        expected = tiny_model.preprocess(image)
        torch.testing.assert_close(processor(images=image, return_tensors="pt")["pixel_values"][0], expected,
                                   atol=atol, rtol=0)


def test_round_trip_restores_the_open_clip_model(tiny_model_dir, tmp_path):
    original = perturbed(load_model(str(tiny_model_dir)))
    folder = export_hf(original, tmp_path / "hf")
    _, _, state = load_hf_clip_dir(folder)
    expected = original.model.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name

    reloaded = load_model(str(folder))
    ids = original.tokenizer(CAPTIONS)
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded.model.encode_text(ids), original.model.encode_text(ids))
        assert torch.equal(reloaded.model.encode_image(pixels), original.model.encode_image(pixels))
    assert reloaded.preprocess_cfg == original.preprocess_cfg


def test_exports_a_model_folder_path(tiny_model_dir, tmp_path):
    folder = export_hf(str(tiny_model_dir), tmp_path / "hf")
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["CLIPModel"]
    assert CLIPModel.from_pretrained(folder).config.projection_dim == 64


@pytest.mark.parametrize(("changes", "message"), [
    ({"vision_cfg": {"attentional_pool": True}}, "vision attentional pooling"),
    ({"vision_cfg": {"pool_type": "avg"}}, "vision pool_type 'avg'"),
    ({"text_cfg": {"pool_type": "last"}}, "text pool_type 'last'"),
    ({"text_cfg": {"ls_init_value": 0.1}}, "text layer scale"),
    ({"vision_cfg": {"qk_norm": True}}, "vision custom attention block"),
    ({"text_cfg": {"proj_bias": True}}, "text projection 'linear' with bias"),
    ({"text_cfg": {"vocab_size": 1000}}, "text vocab_size 1000"),
    ({"init_logit_bias": -10.0}, "logit bias"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_refuses_architectures_clip_model_cannot_express(tiny_model, tmp_path, changes, message):
    with pytest.raises(ExportError, match=message) as error:
        export_hf(variant(tiny_model, **changes), tmp_path / "hf")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "hf").exists()


def test_refuses_an_unmerged_lora_model(tiny_model, tmp_path):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(tiny_model.model, peft.LoraConfig(r=2, target_modules=["c_fc"]))
    wrapped = LoadedModel(lora, tiny_model.model_cfg, tiny_model.preprocess_cfg, "lora-model")
    with pytest.raises(ExportError, match="merge LoRA adapters"):
        export_hf(wrapped, tmp_path / "hf")


def test_refuses_preprocessing_clip_image_processor_cannot_express(tiny_model, tmp_path):
    tiny_model.preprocess_cfg["resize_mode"] = "longest"
    with pytest.raises(ExportError, match="resize_mode 'longest'"):
        export_hf(tiny_model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
