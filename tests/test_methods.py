"""The method registry and config sections, and each method trained end to end on a tiny world."""

import hashlib
import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from safeclip_sdk import SafeclipError, load_model
from safeclip_sdk.cli.main import cli
from safeclip_sdk.training.config import load_config, to_dict
from safeclip_sdk.demo.world import build_demo_world
from safeclip_sdk.methods import available_methods, get_method, register
from safeclip_sdk.methods.base import Method
from safeclip_sdk.methods.hysac.config import HySACConfig
from safeclip_sdk.methods.safer_clip.config import SaferClipConfig
from safeclip_sdk.training.run import train


def test_registry_lists_the_three_methods_and_names_unknown_ones():
    assert available_methods() == ["safe-clip", "safer-clip", "hysac"]
    assert get_method("hysac").config_class is HySACConfig
    with pytest.raises(SafeclipError, match="method 'clip-x' is not one of safe-clip, safer-clip, hysac"):
        get_method("clip-x")

    class Impostor(Method):
        name, section = "safer-clip", "impostor"

    with pytest.raises(SafeclipError, match="method 'safer-clip' is already registered"):
        register(Impostor)
    with pytest.raises(SafeclipError, match="config key 'method' must be one of safe-clip, safer-clip, hysac"):
        load_config(None, {"method": "clip-x"})


def test_method_settings_live_in_their_section_and_the_method_override_applies_first(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("method: safe-clip\nsafe_clip: {tau: 0.05}\nhysac: {curv_init: 2.0}\n")
    # one file can hold several methods' sections: the selected method reads its own
    assert load_config(path).method_config.tau == 0.05
    hysac = load_config(path, {"method": "hysac", "hysac.max_logit_scale": 50.0})
    assert hysac.method_config.curv_init == 2.0 and hysac.method_config.max_logit_scale == 50.0
    saved = to_dict(hysac)
    assert "hysac" in saved and "safe_clip" not in saved and "method_config" not in saved

    safer = load_config(None, {"method": "safer-clip", "safer_clip.tau": 0.02,
                               "safer_clip.curriculum.quantiles": [0.5, 0.25]})
    assert isinstance(safer.method_config, SaferClipConfig)
    assert safer.method_config.tau == 0.02 and safer.method_config.curriculum.quantiles == [0.5, 0.25]
    with pytest.raises(SafeclipError, match="'hysac.curv_init' belongs to method hysac, but this run trains "
                                            "safer-clip \\(select it with --method hysac\\)"):
        load_config(None, {"method": "safer-clip", "hysac.curv_init": 2.0})
    # Safe-CLIP's section was called `loss` before: old files and run folders still load
    assert load_config(None, {"loss.tau": 0.03}).method_config.tau == 0.03


def test_a_config_object_can_be_retrained_with_another_method(tmp_path):
    # the old method's section is dropped, the new one's keys apply; validation runs before any file is written
    from safeclip_sdk.training.config import TrainConfig

    config = TrainConfig(output_dir=str(tmp_path / "run"))
    with pytest.raises(SafeclipError, match="'hysac.curv_init' must be greater than 0"):
        train(config, method="hysac", **{"hysac.curv_init": -1.0})
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"method": "safer-clip", "safer_clip.tau": 0}, "'safer_clip.tau' must be a number greater than 0 or 'base'"),
    ({"method": "safer-clip", "safer_clip.curriculum.quantiles": [0.3, 0.6]}, "quantiles must decrease"),
    ({"method": "safer-clip", "safer_clip.weights": {"text_relativ": 1}}, "unknown term 'text_relativ'"),
    ({"method": "hysac", "hysac.curv_init": -1}, "'hysac.curv_init' must be greater than 0"),
    ({"method": "hysac", "hysac.logit_scale_init": 200.0}, "'hysac.logit_scale_init' \\(200.0\\) is above"),
    ({"method": "hysac", "hysac.traversal.statistic": "max"}, "'hysac.traversal.statistic' must be one of"),
    ({"betas": [0.9, 1.5]}, "'betas' must be two numbers in \\[0, 1\\)"),
])
def test_method_settings_are_validated_in_one_line(overrides, message):
    with pytest.raises(SafeclipError, match=message) as error:
        load_config(None, overrides)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_demo_world(tmp_path_factory.mktemp("world"), n_train=48, n_val=16, n_test=16, seed=2)


def _config(tiny_model_dir, world, run_dir, method, **values):
    config = {"method": method, "base_model": str(tiny_model_dir), "pretrained": None, "output_dir": str(run_dir),
              "data": {"train": str(world["train"]), "val": str(world["val"])},
              "lora": {"rank": 4, "alpha": 4.0}, "batch_size": 8, "epochs": 1, "lr": 1e-3, "device": "cpu",
              "log_every": 1, "early_stopping_patience": 0}
    config.update(values)
    return config


def _write_yaml(path, values):
    path.write_text(yaml.safe_dump(values))
    return path


def _logged(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def _text_only(world, tmp_path):
    rows = [json.loads(line) for line in world["train"].read_text().splitlines()]
    path = tmp_path / "text_only.jsonl"
    path.write_text("\n".join(json.dumps({**{k: v for k, v in row.items() if k != "unsafe_image"},
                                          "safe_image": str(world["train"].parent / row["safe_image"])})
                              for row in rows))
    return path


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_safer_clip_trains_through_the_cli_with_its_targets_and_curriculum(tiny_model_dir, world, tmp_path):
    cfg = _write_yaml(tmp_path / "cfg.yaml", _config(tiny_model_dir, world, tmp_path / "run", "safe-clip"))
    outcome = CliRunner().invoke(cli, ["train", "-c", str(cfg), "--method", "safer-clip", "--epochs", "3",
                                       "--set", "safer_clip.tau=0.02"])
    assert outcome.exit_code == 0, outcome.output
    run_dir = tmp_path / "run"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["method"] == "safer-clip" and saved["safer_clip"]["tau"] == 0.02 and "safe_clip" not in saved

    # the curriculum: the easiest third of the 48 items, then two thirds, then all: 2 + 4 + 6 steps
    logged = _logged(run_dir)
    assert [sum(1 for r in logged if r["epoch"] == epoch) for epoch in range(3)] == [2, 4, 6]
    assert {"image_relative", "text_relative", "text_proximity", "image_proximity",
            "text_safe_contrastive"} <= set(logged[0])
    metadata = json.loads((run_dir / "model" / "safeclip.json").read_text())
    assert metadata["method"] == "safer-clip" and metadata["embedding_space"] == {"kind": "cosine", "dim": 64}
    assert "SafeR-CLIP" in (run_dir / "model" / "README.md").read_text()
    meta = json.loads((run_dir / "cache" / "train-targets" / "proximity_targets.json").read_text())
    assert meta["count"] == 48 and meta["pool_size"] == 48
    assert (run_dir / "cache" / "val-targets" / "proximity_targets.json").is_file()

    trained, base = load_model(str(run_dir / "model")), load_model(str(tiny_model_dir))
    tokens = trained.tokenizer(["a man holding a gun"])
    with torch.no_grad():
        assert not torch.allclose(trained.model.encode_text(tokens), base.model.encode_text(tokens))


@pytest.mark.slow
def test_safer_clip_reuses_a_shared_target_cache_and_trains_on_text_only_data(tiny_model_dir, world, tmp_path,
                                                                                caplog):
    text_only = _text_only(world, tmp_path)
    cache = tmp_path / "shared-cache"
    values = _config(tiny_model_dir, world, tmp_path / "first", "safer-clip", data={"train": str(text_only)},
                     max_steps=1, safer_clip={"cache_dir": str(cache)})
    first = train(_write_yaml(tmp_path / "a.yaml", values))
    assert first.report["text_only"] is True
    # without unsafe images the relative terms and the image proximity drop out
    assert set(_logged(tmp_path / "first")[0]) - {"step", "epoch", "lr", "loss"} == {
        "text_proximity", "text_safe_cos", "image_safe_cos", "text_safe_contrastive", "image_safe_contrastive"}
    targets = cache / "train-targets" / "proximity_targets.indices.npy"
    written = targets.stat().st_mtime_ns

    with caplog.at_level("INFO", logger="safeclip_sdk.methods.safer_clip.targets"):
        train(_write_yaml(tmp_path / "b.yaml", {**values, "output_dir": str(tmp_path / "second")}))
    assert "reusing the cache" in caplog.text and targets.stat().st_mtime_ns == written
    assert not (tmp_path / "second" / "cache").exists()


@pytest.mark.slow
def test_hysac_trains_its_geometry_and_writes_the_lorentz_space_and_calibration(tiny_model_dir, world, tmp_path):
    run_dir = tmp_path / "run"
    result = train(_write_yaml(tmp_path / "cfg.yaml", _config(
        tiny_model_dir, world, run_dir, "hysac", epochs=2, lr=1e-2, weight_decay=0.2, betas=[0.9, 0.98],
        hysac={"curv_init": 0.5})))
    assert result.report["steps"] == 12
    assert {"contrastive_safe", "contrastive_unsafe", "entailment_safe_image_unsafe_text"} <= set(_logged(run_dir)[0])

    metadata = json.loads((run_dir / "model" / "safeclip.json").read_text())
    space = metadata["embedding_space"]
    assert space["kind"] == "lorentz" and space["dim"] == 64
    assert 0.05 <= space["curvature"] <= 5.0 and space["curvature"] != 0.5  # learned, within its clamp
    assert 0 < space["text_scale"] <= 1 and 0 < space["image_scale"] <= 1
    block = metadata["hysac"]
    assert block["calibration_split"] == "validation" and block["calibration"]["modalities"] == ["text", "image"]
    assert set(block["calibration_modality"]) == {"text", "image"}
    assert 0.0 <= block["calibration"]["auc"] <= 1.0 and block["calibration"]["at_threshold"]["unsafe_items"] == 32
    assert set(block["distance_stats"]) == {"text_safe", "image_safe", "text_unsafe", "image_unsafe"}
    assert block["distance_stats"]["text_safe"]["count"] == 16
    assert block["traversal"]["boundary"] == pytest.approx(block["distance_stats"]["image_safe"]["mean"])
    # the curves beside the run, as JSON and as a picture
    assert json.loads((run_dir / "calibration.json").read_text())["calibration"] == block["calibration"]
    assert (run_dir / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the geometry is checkpointed beside the adapters; the model keeps the best epoch's (the last here)
    from safetensors.torch import load_file

    latest = (run_dir / "checkpoints" / "latest").read_text()
    checkpoint = load_file(str(run_dir / "checkpoints" / latest / "trainable.safetensors"))
    assert {"method.head.log_curv", "method.head.log_alpha_text", "method.head.log_alpha_image",
            "method.head.log_logit_scale"} <= set(checkpoint)
    assert result.progress.best_step == 12
    assert float(checkpoint["method.head.log_curv"].exp()) == pytest.approx(space["curvature"], rel=1e-6)

    # the folder's Encoder embeds like training did: classifying the validation texts at the stored
    # text threshold reproduces the rates the calibration recorded
    from safeclip_sdk.runtime.classify import classify
    from safeclip_sdk.data import load_dataset

    items = load_dataset(world["val"]).items
    texts = [item.safe_text for item in items] + [item.unsafe_text for item in items]
    labels = [result.label for result in classify(run_dir / "model", texts, device="cpu", backend="torch")]
    recorded = block["calibration_modality"]["text"]["at_threshold"]
    assert 100 * labels[:16].count("unsafe") / 16 == pytest.approx(recorded["fpr"])
    assert 100 * labels[16:].count("safe") / 16 == pytest.approx(recorded["fnr"])


def test_hysac_on_text_only_data_calibrates_on_texts(tiny_model_dir, world, tmp_path):
    run_dir = tmp_path / "run"
    train(_write_yaml(tmp_path / "cfg.yaml", _config(tiny_model_dir, world, run_dir, "hysac", max_steps=1,
                                                     data={"train": str(_text_only(world, tmp_path))})))
    # the four terms that need an unsafe image drop out
    assert set(_logged(run_dir)[0]) - {"step", "epoch", "lr", "loss"} == {
        "contrastive_safe", "contrastive_unsafe_text_safe_image", "entailment_safe",
        "entailment_safe_image_unsafe_text", "radial_text"}
    block = json.loads((run_dir / "model" / "safeclip.json").read_text())["hysac"]
    # no validation split: calibrated on the training texts, and said so
    assert block["calibration_split"] == "train" and block["calibration"]["modalities"] == ["text"]
    assert set(block["calibration_modality"]) == {"text"}
    assert set(block["distance_stats"]) == {"text_safe", "image_safe", "text_unsafe"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["safer-clip", "hysac"])
def test_an_interrupted_run_resumes_to_bitwise_the_same_model(tiny_model_dir, world, tmp_path, method):
    # constant rate: the schedule must not depend on max_steps, which the resumed run raises.
    # Step 2 ends safer-clip's first curriculum epoch, so the resumed run also changes stage. No
    # validation split: the model saved is then the last step's, not the best epoch's.
    values = _config(tiny_model_dir, world, tmp_path / "straight", method, epochs=2, max_steps=4,
                     lr_schedule="constant", checkpoint_every=1, lora={"rank": 4, "alpha": 4.0, "dropout": 0.1},
                     data={"train": str(world["train"])})
    straight = train(_write_yaml(tmp_path / "straight.yaml", values))
    values["output_dir"] = str(tmp_path / "resumed")
    cfg = _write_yaml(tmp_path / "resumed.yaml", values)
    model = "open_clip_model.safetensors"
    interrupted = _sha256(train(cfg, max_steps=2).model_dir / model)
    resumed = train(cfg, resume=True)
    assert resumed.progress.step == straight.progress.step == 4
    assert [record["step"] for record in _logged(tmp_path / "resumed")] == [1, 2, 3, 4]
    assert _sha256(resumed.model_dir / model) != interrupted
    assert _sha256(resumed.model_dir / model) == _sha256(straight.model_dir / model)
    for key in ("embedding_space", "hysac"):
        saved = [json.loads((r.model_dir / "safeclip.json").read_text()).get(key) for r in (straight, resumed)]
        assert saved[0] == saved[1]


def test_calibration_never_puts_the_threshold_on_a_score():
    # an untrained model may put unsafe items nearer the origin: the best threshold flags nothing,
    # and it must sit clear of the highest score, not on it, or recomputed distances flip that item
    from safeclip_sdk.metrics.calibration import calibrate

    nothing = calibrate([2.0, 3.0], [0.5, 1.0])
    assert nothing["threshold"] == pytest.approx(3.5) and nothing["at_threshold"]["fpr"] == 0.0
    everything = calibrate([0.5], [2.0, 3.0], objective="accuracy")["accuracy_curve"]["threshold"]
    assert everything[-1] == pytest.approx(-0.25)  # flags all: half the gap of 0.5 and 2.0 below 0.5
