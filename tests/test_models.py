import hashlib
import json
import os

import pytest
import torch

from safeclip_sdk import ModelLoadError, load_model, save_model_dir
from safeclip_sdk.model.architectures import open_clip_module


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


# --- weights files that cannot be used: one line naming the file ---

WEIGHTS = "open_clip_model.safetensors"


@pytest.fixture
def saved(tiny_model, tmp_path):
    return save_model_dir(tmp_path / "m", tiny_model.model, tiny_model.model_cfg, tiny_model.preprocess_cfg,
                          metadata={"method": "safe-clip"})


def without_recorded_hash(folder):
    metadata = json.loads((folder / "safeclip.json").read_text())
    del metadata["weights"]
    (folder / "safeclip.json").write_text(json.dumps(metadata))
    return folder


def assert_one_line(info, *parts):
    message = str(info.value)
    assert "\n" not in message and "weights_only=False" not in message
    for part in parts:
        assert part in message, message


def test_saved_folder_records_the_sha256_of_its_weights(saved):
    recorded = json.loads((saved / "safeclip.json").read_text())
    assert recorded["method"] == "safe-clip"
    digest = hashlib.sha256((saved / WEIGHTS).read_bytes()).hexdigest()
    assert recorded["weights"] == {"file": WEIGHTS, "sha256": digest}


def test_tampered_weights_are_refused_with_both_hashes(saved):
    recorded = json.loads((saved / "safeclip.json").read_text())["weights"]["sha256"]
    data = bytearray((saved / WEIGHTS).read_bytes())
    data[-1] ^= 0x01  # one bit of one tensor value: still a valid safetensors file
    (saved / WEIGHTS).write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ModelLoadError) as info:
        load_model(str(saved))
    assert_one_line(info, f"{saved / WEIGHTS}: sha256 {actual[:12]}", f"does not match {recorded[:12]}")
    assert len(load_model(str(without_recorded_hash(saved))).model.state_dict()) > 0  # unchecked, it loads


def test_folders_without_a_recorded_hash_still_load(saved, tiny_model):
    (saved / "safeclip.json").unlink()  # a plain open_clip local-dir folder
    tokens = tiny_model.tokenizer(["a red car"])
    with torch.no_grad():
        assert torch.equal(load_model(f"local-dir:{saved}").model.encode_text(tokens),
                           tiny_model.model.encode_text(tokens))


def test_truncated_safetensors_is_named(saved):
    without_recorded_hash(saved)
    data = (saved / WEIGHTS).read_bytes()
    (saved / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as info:
        load_model(str(saved))
    assert_one_line(info, f"{saved / WEIGHTS}: corrupt or truncated safetensors file")
    with pytest.raises(ModelLoadError) as info:
        load_model("safeclip-tiny", pretrained=str(saved / WEIGHTS))
    assert_one_line(info, f"{saved / WEIGHTS}: corrupt or truncated safetensors file")


def test_tensors_that_do_not_fit_the_config_are_named(saved):
    config = json.loads((saved / "open_clip_config.json").read_text())
    config["model_cfg"]["embed_dim"] = 32
    (saved / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as info:
        load_model(str(saved))
    assert_one_line(info, f"{saved / WEIGHTS}: tensor ", "but the model config needs [", "another architecture")


def test_pickles_are_refused_without_running_them(tiny_model, tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    checkpoint = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": Payload()}}, checkpoint)
    with pytest.raises(ModelLoadError) as info:
        load_model("safeclip-tiny", pretrained=str(checkpoint))
    assert_one_line(info, f"{checkpoint}: refused: the file holds pickled Python objects",
                    "save the weights as safetensors")
    assert not marker.exists()


def test_corrupt_and_mismatched_torch_checkpoints(tiny_model, tmp_path):
    state = tiny_model.model.state_dict()
    checkpoint = tmp_path / "ckpt.pt"
    torch.save(state, checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[:4000])
    with pytest.raises(ModelLoadError) as info:
        load_model("safeclip-tiny", pretrained=str(checkpoint))
    assert_one_line(info, f"{checkpoint}: corrupt or truncated checkpoint")
    torch.save({**{k: v for k, v in state.items() if k != "logit_scale"}, "extra": torch.zeros(1)}, checkpoint)
    with pytest.raises(ModelLoadError) as info:
        load_model("safeclip-tiny", pretrained=str(checkpoint))
    assert_one_line(info, f"{checkpoint}: the tensors do not fit the model config: missing tensors 'logit_scale'; "
                          f"unexpected tensors 'extra'")


def test_recorded_weights_entry_must_name_a_file_inside_the_folder(saved):
    metadata = json.loads((saved / "safeclip.json").read_text())
    metadata["weights"]["file"] = "../elsewhere.safetensors"
    (saved / "safeclip.json").write_text(json.dumps(metadata))
    with pytest.raises(ModelLoadError, match="'weights.file' must be a file name inside the folder"):
        load_model(str(saved))
