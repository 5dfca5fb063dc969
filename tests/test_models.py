import json

import pytest
import torch

from safeclip_sdk import ModelLoadError, load_model, save_model_dir
from safeclip_sdk.models import open_clip_module


def test_tiny_architecture_is_registered_and_builds_offline(tiny_model):
    assert "safeclip-tiny" in open_clip_module().list_models()
    tokens = tiny_model.tokenizer(["a red car"])
    assert tokens.shape == (1, tiny_model.context_length)
    assert tiny_model.model.encode_text(tokens).shape == (1, tiny_model.model_cfg["embed_dim"])


def test_saved_folder_reloads_identically_in_safeclip_and_open_clip(tiny_model, tmp_path):
    out = save_model_dir(tmp_path / "m", tiny_model.model, tiny_model.model_cfg, tiny_model.preprocess_cfg,
                         metadata={"method": "safe-clip"}, model_card="# card")
    assert json.loads((out / "safeclip.json").read_text())["method"] == "safe-clip"
    assert not list(out.glob(".*.tmp")), "temporary files must be renamed away"
    tokens = tiny_model.tokenizer(["a red car", "a dog"])
    images = torch.randn(2, 3, tiny_model.image_size, tiny_model.image_size)
    reloaded = load_model(str(out))
    with torch.no_grad():
        assert torch.equal(reloaded.model.encode_text(tokens), tiny_model.model.encode_text(tokens))
        assert torch.equal(reloaded.model.encode_image(images), tiny_model.model.encode_image(images))
    open_clip = open_clip_module()
    native = open_clip.create_model(f"local-dir:{out}").eval()
    with torch.no_grad():
        assert torch.equal(native.encode_text(tokens), tiny_model.model.encode_text(tokens))


def test_architecture_with_checkpoint_file(tiny_model, tmp_path):
    out = save_model_dir(tmp_path / "m", tiny_model.model, tiny_model.model_cfg, tiny_model.preprocess_cfg)
    reloaded = load_model("safeclip-tiny", pretrained=str(out / "open_clip_model.safetensors"))
    tokens = tiny_model.tokenizer(["weights from a file"])
    with torch.no_grad():
        assert torch.equal(reloaded.model.encode_text(tokens), tiny_model.model.encode_text(tokens))


@pytest.mark.parametrize("source, pretrained, message", [
    ("no-such-arch", None, "unknown model 'no-such-arch'"),
    ("safeclip-tiny", "no-such-tag", "neither a file nor a known tag"),
    ("local-dir:/nonexistent/folder", None, "folder not found"),
])
def test_bad_sources_give_one_line_errors(source, pretrained, message):
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(source, pretrained)
    assert "\n" not in str(info.value)


def test_folder_without_weights_is_rejected(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 8}}))
    with pytest.raises(ModelLoadError, match="no weights file"):
        load_model(str(tmp_path))
