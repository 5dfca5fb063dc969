"""Hugging Face CLIPModel folders load into open_clip and compute the same embeddings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from safeclip_sdk import ModelLoadError, load_model
from safeclip_sdk._utils.compat import ensure_torchvision
from safeclip_sdk.model.architectures import open_clip_module

pytest.importorskip("transformers")
ensure_torchvision()
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel  # noqa: E402

VOCAB, CONTEXT, IMAGE = 1000, 16, 32


def save_tiny_hf_clip(folder, *, hidden_act="quick_gelu", eos_token_id=2, layer_norm_eps=1e-5,
                      **save_kwargs) -> CLIPModel:
    """A seeded random transformers CLIPModel saved with ``save_pretrained``."""
    torch.manual_seed(0)
    towers = {"hidden_act": hidden_act, "layer_norm_eps": layer_norm_eps, "num_hidden_layers": 2}
    config = CLIPConfig(
        text_config={**towers, "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 80,
                     "num_attention_heads": 4, "max_position_embeddings": CONTEXT,
                     "bos_token_id": VOCAB - 2, "eos_token_id": eos_token_id, "pad_token_id": 0},
        vision_config={**towers, "hidden_size": 48, "intermediate_size": 96, "num_attention_heads": 3,
                       "image_size": IMAGE, "patch_size": 8},
        projection_dim=24,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():  # LayerNorms and biases start at 1 and 0: perturb them so every mapping shows
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(folder, **save_kwargs)
    return model


def features(output) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features, 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def token_ids(eos_token_id: int) -> torch.Tensor:
    """Random ids with two EOS tokens per row and larger ids after them, so argmax pooling and
    first-EOS pooling pick different positions unless EOS is the argmax."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB - 2, (4, CONTEXT), generator=generator)
    for row, position in enumerate((3, 6, 9, 14)):
        ids[row, position] = eos_token_id if eos_token_id != 2 else VOCAB - 1
        ids[row, min(position + 1, CONTEXT - 1)] = eos_token_id if eos_token_id != 2 else VOCAB - 1
    return ids


def assert_same_embeddings(hf_model: CLIPModel, folder, ids: torch.Tensor) -> None:
    loaded = load_model(str(folder))
    pixels = torch.randn(3, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected_text = features(hf_model.get_text_features(input_ids=ids))
        expected_image = features(hf_model.get_image_features(pixel_values=pixels))
        torch.testing.assert_close(loaded.model.encode_text(ids), expected_text, atol=1e-5, rtol=0)
        torch.testing.assert_close(loaded.model.encode_image(pixels), expected_image, atol=1e-5, rtol=0)
    assert loaded.model.logit_scale.item() == pytest.approx(hf_model.logit_scale.item())


@pytest.mark.parametrize(("hidden_act", "eos_token_id", "layer_norm_eps"), [
    ("quick_gelu", 2, 1e-5),  # legacy configs: argmax pooling, OpenAI weights' activation
    ("gelu", 500, 1e-3),  # newer configs: first-EOS pooling; non-default LayerNorm eps
])
def test_embeddings_equal_transformers(tmp_path, hidden_act, eos_token_id, layer_norm_eps):
    hf_model = save_tiny_hf_clip(tmp_path, hidden_act=hidden_act, eos_token_id=eos_token_id,
                                 layer_norm_eps=layer_norm_eps)
    assert_same_embeddings(hf_model, tmp_path, token_ids(eos_token_id))


@pytest.mark.parametrize("layout", ["sharded_safetensors", "pytorch_model_bin"])
def test_other_weight_layouts(tmp_path, layout):
    if layout == "sharded_safetensors":
        hf_model = save_tiny_hf_clip(tmp_path, max_shard_size="100KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
        assert not (tmp_path / "model.safetensors").exists()
    else:
        hf_model = save_tiny_hf_clip(tmp_path)
        torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / "pytorch_model.bin")
        (tmp_path / "model.safetensors").unlink()
    assert_same_embeddings(hf_model, tmp_path, token_ids(2))


def test_preprocessor_config_sets_the_image_transform(tmp_path):
    save_tiny_hf_clip(tmp_path)
    processor = CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE},
                                   image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], resample=2)
    processor.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.preprocess_cfg["mean"] == [0.5, 0.4, 0.3]
    assert loaded.preprocess_cfg["std"] == [0.2, 0.25, 0.3]
    assert loaded.preprocess_cfg["interpolation"] == "bilinear"
    assert loaded.image_size == IMAGE
    rng = np.random.default_rng(0)
    for shape, atol in (((IMAGE, IMAGE, 3), 1e-5), ((50, 70, 3), 0.1)):  # resizers differ slightly
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(loaded.preprocess(image), expected, atol=atol, rtol=0)


def test_without_preprocessor_config_uses_clip_defaults(tmp_path):
    save_tiny_hf_clip(tmp_path)
    open_clip = open_clip_module()
    loaded = load_model(str(tmp_path))
    assert loaded.preprocess_cfg["mean"] == list(open_clip.OPENAI_DATASET_MEAN)
    assert loaded.preprocess_cfg["std"] == list(open_clip.OPENAI_DATASET_STD)
    assert loaded.image_size == IMAGE
    assert loaded.context_length == CONTEXT


@pytest.mark.service
def test_loading_does_not_need_transformers(tmp_path):
    hf_model = save_tiny_hf_clip(tmp_path)
    ids = token_ids(2)
    with torch.no_grad():
        expected = features(hf_model.get_text_features(input_ids=ids))
    torch.save({"ids": ids, "expected": expected}, tmp_path / "case.pt")
    # A None entry in sys.modules makes `import transformers` raise ImportError, as if not installed.
    script = f"""
import sys
sys.modules["transformers"] = None
import torch
from safeclip_sdk import load_model
case = torch.load({str(tmp_path / "case.pt")!r})
model = load_model({str(tmp_path)!r}).model
with torch.no_grad():
    torch.testing.assert_close(model.encode_text(case["ids"]), case["expected"], atol=1e-5, rtol=0)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_clip")
    save_tiny_hf_clip(folder)
    return folder


def _edit_config(folder, **text_config):
    config = json.loads((folder / "config.json").read_text())
    config["text_config"].update(text_config)
    (folder / "config.json").write_text(json.dumps(config))


def _drop_weight(folder, name):
    state = load_file(folder / "model.safetensors")
    del state[name]
    save_file(state, folder / "model.safetensors")


@pytest.mark.parametrize(("break_folder", "message"), [
    (lambda folder: _edit_config(folder, hidden_act="gelu_new"),
     r"hidden_act \['gelu_new'\] is not supported"),
    (lambda folder: _edit_config(folder, hidden_act="gelu"), "different activations"),
    (lambda folder: (folder / "model.safetensors").unlink(), "no weights"),
    (lambda folder: _drop_weight(folder, "text_model.encoder.layers.1.self_attn.k_proj.bias"),
     "missing weight 'text_model.encoder.layers.1.self_attn.k_proj.bias'"),
    (lambda folder: _edit_config(folder, max_position_embeddings=CONTEXT + 4),
     "positional_embedding' has shape"),
    (lambda folder: (folder / "model.safetensors").write_bytes(b"not safetensors"),
     "cannot read safetensors"),
], ids=["activation", "mixed_activations", "no_weights", "missing_tensor", "shape", "corrupt"])
def test_bad_folders_give_one_line_errors(hf_folder, tmp_path, break_folder, message):
    folder = tmp_path / "broken"
    shutil.copytree(hf_folder, folder)
    break_folder(folder)
    with pytest.raises(ModelLoadError, match=message) as error:
        load_model(str(folder))
    assert "\n" not in str(error.value)
    assert str(folder) in str(error.value)
