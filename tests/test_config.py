from pathlib import Path

import pytest

import safeclip_sdk
from safeclip_sdk import SafeclipError
from safeclip_sdk.config import LoraConfig, load_config, parse_override, save_config
from safeclip_sdk.lora import apply_lora, trainable_parameter_count

SHIPPED = sorted((Path(safeclip_sdk.__file__).parent / "configs").glob("*.yaml"))


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 0.01\nlora: {rank: 8}\nloss: {weights: {text_safe_cos: 0.5}}\n")
    config = load_config(path, dict([parse_override("lr=2e-4"), parse_override("lora.dropout=0")]))
    assert config.lr == 2e-4 and config.lora.rank == 8 and config.lora.dropout == 0
    assert config.loss.weights["text_safe_cos"] == 0.5 and config.loss.weights["image_unsafe_contrastive"] == 0.5
    assert config.lora.alpha == LoraConfig().alpha
    save_config(config, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("overrides, message", [
    ({"lora.rnk": 3}, "unknown config key 'lora.rnk'"),
    ({"nope": 1}, "unknown config key 'nope'"),
])
def test_unknown_keys_are_named(overrides, message):
    with pytest.raises(SafeclipError, match=message):
        load_config(None, overrides)


def test_bad_override_syntax_and_bad_file(tmp_path):
    with pytest.raises(SafeclipError, match="must look like key.path=value"):
        parse_override("lr")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SafeclipError, match="must be a YAML mapping"):
        load_config(tmp_path / "list.yaml")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load_and_their_lora_targets_fit_open_clip(path, tiny_model):
    config = load_config(path)
    peft_model = apply_lora(tiny_model.model, config.lora)
    trainable, total = trainable_parameter_count(peft_model)
    assert 0 < trainable < total


def test_numbers_in_yaml_exponent_form_and_bad_numbers():
    assert load_config(None, {"lr": "1e-4", "epochs": "3"}).lr == 1e-4
    assert load_config(None, {"max_steps": "1e3"}).max_steps == 1000
    with pytest.raises(SafeclipError, match="'batch_size' must be a whole number"):
        load_config(None, {"batch_size": 2.5})
    with pytest.raises(SafeclipError, match="'lora.rank' must be a number, got 'big'"):
        load_config(None, {"lora.rank": "big"})


def test_device_settings_resolve_or_fail_in_one_line():
    import torch

    from safeclip_sdk.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SafeclipError, match="device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(SafeclipError, match="torch sees no CUDA GPU"):
            resolve_device("cuda:1")
