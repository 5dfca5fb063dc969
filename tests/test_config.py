from pathlib import Path

import pytest

import safeclip_sdk
from safeclip_sdk import SafeclipError
from safeclip_sdk.training.config import LoraConfig, load_config, parse_override, save_config
from safeclip_sdk.training.lora import apply_lora, trainable_parameter_count

SHIPPED = sorted((Path(safeclip_sdk.__file__).parent / "configs").glob("*.yaml"))


def test_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 0.01\nlora: {rank: 8}\nsafe_clip: {weights: {text_safe_cos: 0.5}}\n")
    config = load_config(path, dict([parse_override("lr=2e-4"), parse_override("lora.dropout=0")]))
    assert config.lr == 2e-4 and config.lora.rank == 8 and config.lora.dropout == 0
    weights = config.method_config.weights
    assert weights["text_safe_cos"] == 0.5 and weights["image_unsafe_contrastive"] == 0.5
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

    from safeclip_sdk._utils.devices import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SafeclipError, match="device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(SafeclipError, match="torch sees no CUDA GPU"):
            resolve_device("cuda:1")


@pytest.mark.parametrize("key, value, message", [
    ("lr", 0, "'lr' must be greater than 0, got 0.0"),
    ("lr", -1e-4, "'lr' must be greater than 0"),
    ("batch_size", -4, "'batch_size' must be at least 1, got -4"),
    ("batch_size", 0, "'batch_size' must be at least 1"),
    ("grad_accum_steps", 0, "'grad_accum_steps' must be at least 1"),
    ("checkpoint_every", 0, "'checkpoint_every' must be at least 1"),
    ("log_every", 0, "'log_every' must be at least 1"),
    ("epochs", 0, "'epochs' must be at least 1, got 0"),
    ("epochs", True, "'epochs' must be a number, got True"),
    ("max_steps", -5, "'max_steps' must be at least 1, got -5 \\(leave it unset for no limit\\)"),
    ("max_steps", 0, "'max_steps' must be at least 1"),
    ("warmup_steps", -1, "'warmup_steps' must be at least 0"),
    ("data.num_workers", -2, "'data.num_workers' must be at least 0"),
    ("lora.rank", 0, "'lora.rank' must be at least 1"),
    ("lora.alpha", 0, "'lora.alpha' must be greater than 0"),
    ("lora.dropout", 1.0, "'lora.dropout' must be in \\[0, 1\\)"),
    ("safe_clip.tau", 0, "'safe_clip.tau' must be a number greater than 0 or 'base'"),
    ("safe_clip.tau", "auto", "'safe_clip.tau' must be a number greater than 0 or 'base'"),
    ("lora.towers", "image", "'lora.towers' must be one of both, text, got 'image'"),
    ("precision", "fp64", "'precision' must be one of auto, fp32, bf16, fp16, got 'fp64'"),
    ("safe_clip.normalization", "mean", "'safe_clip.normalization' must be one of sum, none, got 'mean'"),
    ("lr_schedule", "linear", "'lr_schedule' must be one of cosine, constant, got 'linear'"),
    ("resume", "yes", "'resume' must be true or false, got 'yes'"),
    ("safe_clip.weights", {"image_unsafe_cos": -1}, "safe_clip.weights.image_unsafe_cos: must be a number >= 0"),
])
def test_values_out_of_range_are_refused_when_the_config_is_built(key, value, message):
    with pytest.raises(SafeclipError, match=message) as error:
        load_config(None, {key: value})
    assert "\n" not in str(error.value)


def test_validation_applies_to_the_merged_config_and_to_configs_built_in_code(tmp_path):
    from safeclip_sdk.training.config import TrainConfig
    from safeclip_sdk.training.run import train

    path = tmp_path / "cfg.yaml"
    path.write_text("epochs: 0\nlr_schedule: constant\n")
    with pytest.raises(SafeclipError, match="'epochs' must be at least 1"):
        load_config(path)
    config = load_config(path, {"epochs": 3})  # the command line fixes the file: valid as a whole
    assert config.epochs == 3 and config.lr_schedule == "constant"
    with pytest.raises(SafeclipError, match="'batch_size' must be at least 1"):
        train(TrainConfig(batch_size=0, output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()


def test_yaml_syntax_error_keeps_its_line_and_column(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 0.01\nlora:\n  rank: 8\n   alpha: 4\n")
    with pytest.raises(SafeclipError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}:4:") and "invalid YAML" in message and "\n" not in message
    path.write_bytes(b"lr: 0.01\n# caf\xe9\n")
    with pytest.raises(SafeclipError, match=r"cfg.yaml:2: config is not UTF-8 text \(byte 0xe9\)"):
        load_config(path)
    with pytest.raises(SafeclipError, match="override 'safe_clip.weights=\\{a: ': invalid YAML value"):
        parse_override("safe_clip.weights={a: ")


@pytest.mark.parametrize("option", [["--epochs", "0"], ["--batch-size", "-4"], ["--lr", "0"]])
def test_cli_refuses_bad_numbers_before_anything_is_loaded_or_written(tmp_path, option):
    from click.testing import CliRunner

    from safeclip_sdk.cli.main import cli

    run_dir = tmp_path / "run"
    outcome = CliRunner().invoke(cli, ["train", "--train-data", str(tmp_path / "absent.jsonl"),
                                       "-o", str(run_dir), *option])
    assert outcome.exit_code != 0
    lines = outcome.output.strip().splitlines()
    assert len(lines) == 1 and option[0].removeprefix("--").replace("-", "_") in lines[0], outcome.output
    assert not run_dir.exists()
