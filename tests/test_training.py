"""End-to-end Safe-CLIP training on a small generated world, through the API and the CLI."""

import json
import os

import pytest
import torch
import yaml
from click.testing import CliRunner

from safeclip_sdk import SafeclipError, load_model
from safeclip_sdk.cli.main import cli
from safeclip_sdk.training.config import load_config, save_config
from safeclip_sdk.demo.world import build_demo_world
from safeclip_sdk.model.architectures import open_clip_module
from safeclip_sdk.training.run import train


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("world"), n_train=16, n_val=8, n_test=8, seed=1)


def _config(tiny_model_dir, world, run_dir, **values):
    config = {"base_model": str(tiny_model_dir), "pretrained": None, "output_dir": str(run_dir),
              "data": {"train": str(world["train"]), "val": str(world["val"])},
              "lora": {"rank": 4, "alpha": 4.0}, "batch_size": 8, "epochs": 1, "lr": 1e-3, "device": "cpu"}
    config.update(values)
    return config


def _write_yaml(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow
def test_train_writes_a_merged_model_folder_that_safeclip_and_open_clip_load(tiny_model_dir, world, tmp_path):
    values = _config(tiny_model_dir, world, tmp_path / "run")
    del values["pretrained"]  # the default tag ("openai") means nothing for a model folder
    cfg = _write_yaml(tmp_path / "cfg.yaml", values)
    result = train(cfg)

    model_dir = tmp_path / "run" / "model"
    assert result.model_dir == model_dir
    assert {"open_clip_model.safetensors", "open_clip_config.json", "safeclip.json", "README.md"} <= \
        {p.name for p in model_dir.iterdir()}
    metadata = json.loads((model_dir / "safeclip.json").read_text())
    assert metadata["method"] == "safe-clip" and metadata["embedding_space"] == {"kind": "cosine", "dim": 64}
    assert metadata["base_model"] == {"source": str(tiny_model_dir), "pretrained": None}
    assert metadata["data"]["train_items"] == 16 and metadata["data"]["text_only"] is False
    assert metadata["config"]["lora"]["rank"] == 4
    assert metadata["metrics"]["steps"] == 2 and "val_loss" in metadata["metrics"]["validation"]
    assert "safe-clip" in (model_dir / "README.md").read_text()
    effective = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert effective["lora"]["rank"] == 4 and effective["lr_schedule"] == "cosine"
    assert metadata["config"]["lr_schedule"] == "cosine"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["steps"] == 2 and report["bad_rows"] == {"train": [], "val": []}

    trained, base = load_model(str(model_dir)), load_model(str(tiny_model_dir))
    tokens = trained.tokenizer(["a red car on a road with a gun"])
    with torch.no_grad():
        assert not torch.allclose(trained.model.encode_text(tokens), base.model.encode_text(tokens))
        native = open_clip_module().create_model(f"local-dir:{model_dir}").eval()
        assert torch.equal(native.encode_text(tokens), trained.model.encode_text(tokens))
    # merged weights: exactly the base architecture's keys, no LoRA leftovers
    assert set(trained.model.state_dict()) == set(base.model.state_dict())


def test_text_only_data_drops_the_unsafe_image_terms(tiny_model_dir, world, tmp_path):
    rows = [json.loads(line) for line in world["train"].read_text().splitlines()]
    text_only = tmp_path / "text_only.jsonl"
    text_only.write_text("\n".join(json.dumps({**{k: v for k, v in row.items() if k != "unsafe_image"},
                                               "safe_image": str(world["train"].parent / row["safe_image"])})
                                   for row in rows))
    config = _config(tiny_model_dir, world, tmp_path / "run", data={"train": str(text_only)}, log_every=1)
    result = train(_write_yaml(tmp_path / "cfg.yaml", config))
    assert result.report["text_only"] is True
    logged = json.loads((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()[0])
    assert "image_safe_cos" in logged and "text_unsafe_contrastive" in logged
    assert "image_unsafe_cos" not in logged and "image_unsafe_contrastive" not in logged


@pytest.mark.slow
def test_cli_overrides_the_yaml_file_and_saves_the_effective_config(tiny_model_dir, world, tmp_path):
    cfg = _write_yaml(tmp_path / "cfg.yaml", _config(tiny_model_dir, world, tmp_path / "run"))
    outcome = CliRunner().invoke(cli, ["train", "-c", str(cfg), "--lr", "1e-4", "--set", "lora.rank=2",
                                       "--set", "safe_clip.weights={text_safe_cos: 0.3}", "--lr-schedule", "constant",
                                       "--warmup-steps", "1"])
    assert outcome.exit_code == 0, outcome.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["lr"] == 1e-4 and saved["lora"]["rank"] == 2
    assert saved["lr_schedule"] == "constant" and saved["warmup_steps"] == 1
    assert saved["safe_clip"]["weights"]["text_safe_cos"] == 0.3
    assert saved["safe_clip"]["weights"]["image_unsafe_contrastive"] == 0.5
    assert "model written to" in outcome.output


@pytest.mark.slow
def test_a_finished_run_is_not_overwritten_without_resume(tiny_model_dir, world, tmp_path):
    cfg = _write_yaml(tmp_path / "cfg.yaml", _config(tiny_model_dir, world, tmp_path / "run"))
    train(cfg)
    with pytest.raises(SafeclipError, match="already holds a run; pass --resume"):
        train(cfg)
    with pytest.raises(SafeclipError, match="cannot resume .*'lr' differs"):
        train(cfg, resume=True, lr=0.5)
    assert train(cfg, resume=True, epochs=2).progress.step == 4  # continues from step 2


def test_bad_rows_stop_the_run_before_training_unless_skipped(tiny_model_dir, world, tmp_path):
    lines = world["train"].read_text().splitlines()
    broken = json.loads(lines[3])
    del broken["unsafe_text"]
    lines[3] = json.dumps(broken)
    bad_file = world["train"].parent / "with_bad_row.jsonl"
    bad_file.write_text("\n".join(lines))
    cfg = _write_yaml(tmp_path / "cfg.yaml", _config(tiny_model_dir, world, tmp_path / "run",
                                                     data={"train": str(bad_file)}))
    outcome = CliRunner().invoke(cli, ["train", "-c", str(cfg)])
    assert outcome.exit_code != 0
    message = outcome.output.strip().splitlines()[-1]
    assert "with_bad_row.jsonl:4" in message and "unsafe_text" in message
    assert not (tmp_path / "run" / "model").exists()

    outcome = CliRunner().invoke(cli, ["train", "-c", str(cfg), "--skip-bad", "--set", "batch_size=5"])
    assert outcome.exit_code == 0, outcome.output
    assert "1 bad rows skipped" in outcome.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [row["source"] for row in report["bad_rows"]["train"]] == [f"{bad_file}:4"]
    assert report["train_items"] == 15


def test_a_run_that_died_before_its_first_checkpoint_is_not_reused_silently(tiny_model_dir, world, tmp_path):
    # what a run killed after its first logged step leaves: the saved config and a log, no checkpoint
    run_dir = tmp_path / "run"
    cfg = _write_yaml(tmp_path / "cfg.yaml", _config(tiny_model_dir, world, run_dir, log_every=1))
    run_dir.mkdir()
    save_config(load_config(cfg), run_dir / "config.yaml")
    (run_dir / "train_log.jsonl").write_text(json.dumps({"step": 1, "epoch": 0, "loss": 999.0}) + "\n")

    with pytest.raises(SafeclipError, match="stopped before its first checkpoint; pass --resume to start it over"):
        train(cfg)
    assert json.loads((run_dir / "train_log.jsonl").read_text())["loss"] == 999.0
    assert train(cfg, resume=True).progress.step == 2
    logged = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in logged] == [1, 2] and logged[0]["loss"] != 999.0


@pytest.mark.slow
def test_a_moved_run_folder_named_by_other_paths_resumes(tiny_model_dir, world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative_train = os.path.relpath(world["train"], tmp_path)
    config = _config(tiny_model_dir, world, "run", data={"train": relative_train, "val": str(world["val"])})
    assert train(_write_yaml(tmp_path / "cfg.yaml", config)).progress.step == 2

    (tmp_path / "run").rename(tmp_path / "moved")
    moved = _config(tiny_model_dir, world, str(tmp_path / "moved"),
                    data={"train": str(world["train"]), "val": str(world["val"])})
    result = train(_write_yaml(tmp_path / "moved.yaml", moved), resume=True, epochs=2)
    assert result.progress.step == 4  # continued from step 2
    with pytest.raises(SafeclipError, match="'data.train' differs"):
        train(_write_yaml(tmp_path / "other.yaml", {**moved, "data": {"train": str(world["val"])}}), resume=True)
