import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safeclip_sdk import SafeclipError
from safeclip_sdk.methods.safe_clip.config import REFERENCE_WEIGHTS
from safeclip_sdk.training.sampling import ResumableBatchSampler
from safeclip_sdk.training.loop import Trainer

from synthetic import SyntheticQuadruplets, make_encoder_and_objective, make_hysac_encoder_and_method, trainer_config

ALL_EIGHT_TERMS = set(REFERENCE_WEIGHTS)


def _gradients(trainer):
    return {name: p.grad.clone() for name, p in trainer.parameters.items()}


def _stacked(data, indices):
    keys = ("safe_image", "unsafe_image", "safe_text", "unsafe_text")
    return {key: torch.stack([data[i][key] for i in indices]) for key in keys}


def _perturbed_trainer(run_dir, data, **config):
    """A trainer whose LoRA B matrices are off zero, so every LoRA parameter gets a gradient."""
    encoder, objective = make_encoder_and_objective(lora_dropout=config.pop("lora_dropout", 0.0))
    trainer = Trainer(encoder, objective, data, trainer_config(run_dir, **config), run_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trainer.parameters.values():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return trainer


def test_accumulated_micro_batches_give_the_gradient_of_one_large_batch(tmp_path):
    # all eight terms: the contrastive ones see every negative of the step, not just their micro-batch's
    data = SyntheticQuadruplets(8)
    batch = _stacked(data, range(8))
    micro_batches = [{key: value[i:i + 2] for key, value in batch.items()} for i in range(0, 8, 2)]

    one_batch = _perturbed_trainer(tmp_path / "a", data)
    terms = one_batch.accumulate_gradients([batch])
    assert ALL_EIGHT_TERMS <= set(terms)
    accumulated = _perturbed_trainer(tmp_path / "b", data, grad_accum_steps=4)
    accumulated_terms = accumulated.accumulate_gradients(micro_batches)

    expected, got = _gradients(one_batch), _gradients(accumulated)
    assert expected.keys() == got.keys()
    assert all(g.abs().max() > 0 for g in expected.values())
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    for name, value in terms.items():
        assert accumulated_terms[name] == pytest.approx(value, rel=1e-5), name


def test_accumulation_recomputes_with_the_dropout_masks_of_the_cached_pass(tmp_path):
    # with dropout, the exact gradient is that of the step's loss over features drawn with one set
    # of masks: embed the micro-batches in order from the same random state, with gradients
    data = SyntheticQuadruplets(8)
    micro_batches = [_stacked(data, range(i, i + 2)) for i in range(0, 8, 2)]
    accumulated = _perturbed_trainer(tmp_path / "a", data, grad_accum_steps=4, lora_dropout=0.3)
    by_hand = _perturbed_trainer(tmp_path / "b", data, grad_accum_steps=4, lora_dropout=0.3)

    torch.manual_seed(7)
    accumulated.accumulate_gradients(micro_batches)
    torch.manual_seed(7)
    by_hand.model.train()
    objective = by_hand.objective
    features = [{**objective.embed(by_hand.model, b), **objective.fixed_features(b)} for b in micro_batches]
    loss, _ = objective.loss({name: torch.cat([f[name] for f in features]) for name in features[0]})
    loss.backward()

    expected, got = _gradients(by_hand), _gradients(accumulated)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_accumulation_is_exact_for_a_method_s_extra_modules_too(tmp_path):
    # HySAC's head scores the features of the whole step: each micro-batch's backward adds its full
    # gradient, and the trainer must keep one copy of it, in a group of its own without weight decay
    data = SyntheticQuadruplets(8)
    batch = _stacked(data, range(8))
    micro_batches = [{key: value[i:i + 2] for key, value in batch.items()} for i in range(0, 8, 2)]
    trainers = []
    for name, accum in (("a", 1), ("b", 4)):
        encoder, method = make_hysac_encoder_and_method()
        config = trainer_config(tmp_path / name, method="hysac", grad_accum_steps=accum, weight_decay=0.2)
        trainer = Trainer(encoder, method.objective(None), data, config, tmp_path / name, hooks=method)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in trainer.parameters.values():
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        trainers.append(trainer)
    one_batch, accumulated = trainers
    one_batch.accumulate_gradients([batch])
    accumulated.accumulate_gradients(micro_batches)
    expected, got = _gradients(one_batch), _gradients(accumulated)
    assert {"method.head.log_curv", "method.head.log_alpha_text", "method.head.log_logit_scale"} <= set(expected)
    for name in expected:
        assert expected[name].abs().max() > 0, name
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    groups = one_batch.optimizer.param_groups
    assert [group["weight_decay"] for group in groups] == [0.2, 0.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in one_batch.extra_parameters.values()}

    # the step hook clamps the geometry back into its range after the optimizer moved it
    with torch.no_grad():
        one_batch.extra_modules["head"].log_alpha_text.fill_(0.5)
    one_batch.optimizer_step()
    assert float(one_batch.extra_modules["head"].log_alpha_text.detach()) <= 0.0


class _Interrupt(Exception):
    pass


def _stop_after(step):
    def callback(trainer):
        if trainer.progress.step == step:
            raise _Interrupt
    return callback


RESUME_CONFIG = dict(batch_size=4, epochs=2, checkpoint_every=2, log_every=1)


@pytest.fixture(scope="module")
def _interrupted_once(tmp_path_factory):
    """A run stopped by a crash at step 5 of 8: checkpoints at steps 2 and 4, its log up to 5."""
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    encoder, objective = make_encoder_and_objective(lora_dropout=0.1)
    first = Trainer(encoder, objective, SyntheticQuadruplets(16), trainer_config(run_dir, **RESUME_CONFIG), run_dir,
                    callbacks=[_stop_after(5)])
    with pytest.raises(_Interrupt):
        first.fit()
    return run_dir


@pytest.fixture
def interrupted_run(_interrupted_once, tmp_path):
    """A copy of the interrupted run folder that a test may resume or damage."""
    return Path(shutil.copytree(_interrupted_once, tmp_path / "interrupted"))


def _fresh_trainer(run_dir, data):
    """A new process's trainer: same base weights (they come from the pretrained checkpoint),
    LoRA weights scrambled so that only a checkpoint can bring them back."""
    encoder, objective = make_encoder_and_objective(lora_dropout=0.1)
    trainer = Trainer(encoder, objective, data, trainer_config(run_dir, **RESUME_CONFIG), run_dir)
    with torch.no_grad():
        for p in trainer.parameters.values():
            p.normal_()
    return trainer


def _logged_steps(run_dir):
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_interrupted_then_resumed_run_ends_with_bitwise_the_same_weights(tmp_path, interrupted_run):
    # dropout on: the resumed run must also restore the random state to draw the same masks
    data = SyntheticQuadruplets(16)
    encoder, objective = make_encoder_and_objective(lora_dropout=0.1)
    straight = Trainer(encoder, objective, data, trainer_config(tmp_path / "straight", **RESUME_CONFIG),
                       tmp_path / "straight")
    straight.fit()
    assert straight.progress.step == 8

    run_dir = interrupted_run
    assert [record["step"] for record in _logged_steps(run_dir)] == [1, 2, 3, 4, 5]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-00000004"
    assert not list((run_dir / "checkpoints").glob(".tmp*"))

    resumed = _fresh_trainer(run_dir, data)
    assert resumed.resume()
    assert resumed.progress.step == 4
    resumed.fit()
    assert resumed.progress.step == 8
    for name, value in straight.trainable_state().items():
        assert torch.equal(resumed.trainable_state()[name], value), name
    # step 5, logged before the interruption, is logged once: by the resumed run
    assert _logged_steps(run_dir) == _logged_steps(tmp_path / "straight")
    assert [record["step"] for record in _logged_steps(run_dir)] == list(range(1, 9))
    # the log records the rate each step used: the cosine over 8 steps, starting at the full rate
    assert [record["lr"] for record in _logged_steps(run_dir)] == \
        pytest.approx([0.5e-3 * (1 + math.cos(math.pi * step / 8)) for step in range(8)])


def test_training_leaves_the_frozen_weights_bitwise_unchanged(tmp_path):
    # peft merges LoRA into attention weights for each forward and subtracts it again, which
    # rounds; the frozen weights must come out exactly as they went in
    data = SyntheticQuadruplets(8)
    encoder, objective = make_encoder_and_objective()
    trainer = Trainer(encoder, objective, data, trainer_config(tmp_path, batch_size=4, epochs=2), tmp_path)
    frozen = {name: p.detach().clone() for name, p in encoder.named_parameters() if not p.requires_grad}
    assert any("in_proj_weight" in name for name in frozen)
    initial = trainer.trainable_state()
    trainer.fit()
    assert any(not torch.equal(value, initial[name]) for name, value in trainer.trainable_state().items())
    after = {name: p for name, p in encoder.named_parameters() if not p.requires_grad}
    assert frozen.keys() == after.keys()
    for name, value in frozen.items():
        assert torch.equal(after[name], value), name


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(interrupted_run, caplog, damage):
    data, run_dir = SyntheticQuadruplets(16), interrupted_run
    newest = run_dir / "checkpoints" / "step-00000004"
    if damage == "deleted":
        shutil.rmtree(newest)
    else:
        weights = newest / "trainable.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    resumed = _fresh_trainer(run_dir, data)
    with caplog.at_level(logging.WARNING, logger="safeclip_sdk.training.loop"):
        assert resumed.resume()
    assert resumed.progress.step == 2
    assert "step-00000004" in caplog.text and "resuming from the older step-00000002" in caplog.text


def test_resume_refuses_when_no_checkpoint_loads(interrupted_run):
    data, checkpoints = SyntheticQuadruplets(16), interrupted_run / "checkpoints"
    for step in (2, 4):
        (checkpoints / f"step-0000000{step}" / "state.json").write_text("{not json")
    with pytest.raises(SafeclipError, match="no checkpoint in .* can be resumed .*step-00000002: unreadable"):
        _fresh_trainer(interrupted_run, data).resume()
    # `latest` left pointing at nothing: an error too, not a silent start from step 0
    for step in (2, 4):
        shutil.rmtree(checkpoints / f"step-0000000{step}")
    with pytest.raises(SafeclipError, match="can be resumed .*step-00000004: checkpoint is missing"):
        _fresh_trainer(interrupted_run, data).resume()


def _applied_rates(trainer):
    """The learning rate each optimizer step of the run uses, then the one left after the last."""
    rates = []
    for _ in range(trainer.total_steps):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()  # no gradients: changes nothing but the scheduler's bookkeeping
        trainer.scheduler.step()
    return rates, trainer.optimizer.param_groups[0]["lr"]


def test_default_schedule_warms_up_then_decays_along_a_cosine_to_zero(tmp_path):
    data = SyntheticQuadruplets(16)
    encoder, objective = make_encoder_and_objective()
    config = trainer_config(tmp_path, lr=0.01, batch_size=2, epochs=2, warmup_steps=4)
    assert config.lr_schedule == "cosine"
    trainer = Trainer(encoder, objective, data, config, tmp_path)
    assert trainer.total_steps == 16
    rates, after_last = _applied_rates(trainer)
    assert rates[:4] == pytest.approx([0.0025, 0.005, 0.0075, 0.01])  # step 0 at a quarter of the rate
    assert rates[4] == pytest.approx(0.01)                              # end of warm-up: the full rate
    assert all(a > b for a, b in zip(rates[4:], rates[5:]))             # then strictly decreasing
    # half-way through the 12 decay steps the cosine is at half the rate; the last step is
    # one twelfth before the end of the curve, and nothing is left after it
    assert rates[10] == pytest.approx(0.005)
    assert rates[-1] == pytest.approx(0.005 * (1 + math.cos(math.pi * 11 / 12)))
    assert after_last == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_keeps_the_rate_after_warm_up(tmp_path):
    data = SyntheticQuadruplets(16)
    encoder, objective = make_encoder_and_objective()
    config = trainer_config(tmp_path, lr=0.01, batch_size=4, epochs=2, warmup_steps=2, lr_schedule="constant")
    rates, after_last = _applied_rates(Trainer(encoder, objective, data, config, tmp_path))
    assert rates == pytest.approx([0.005] + [0.01] * 7) and after_last == pytest.approx(0.01)


def test_early_stopping_stops_when_the_validation_metric_does_not_improve(tmp_path):
    # every step's update is undone: the validation loss cannot improve after the first epoch
    data = SyntheticQuadruplets(8)
    encoder, objective = make_encoder_and_objective()
    trainer = Trainer(encoder, objective, data, trainer_config(tmp_path, epochs=5, batch_size=4,
                                                               early_stopping_patience=1),
                      tmp_path, val_dataset=SyntheticQuadruplets(8, seed=5))
    initial = trainer.trainable_state()
    trainer.callbacks.append(lambda trainer: trainer.load_trainable_state(initial))
    progress = trainer.fit()
    assert progress.stopped_early
    assert progress.epoch == 2 and progress.best_step == 2
    assert [round(h["val_loss"], 6) for h in progress.history] == [round(progress.history[0]["val_loss"], 6)] * 2
    assert (tmp_path / "checkpoints" / "best.safetensors").is_file()


def test_sampler_shards_a_global_batch_in_rank_order():
    single = list(ResumableBatchSampler(20, 4, seed=3, epoch=1))
    rank0 = list(ResumableBatchSampler(20, 2, seed=3, epoch=1, rank=0, world_size=2))
    rank1 = list(ResumableBatchSampler(20, 2, seed=3, epoch=1, rank=1, world_size=2))
    assert [a + b for a, b in zip(rank0, rank1)] == single
    assert list(ResumableBatchSampler(20, 4, seed=3, epoch=1, start_micro_batch=2)) == single[2:]
    assert list(ResumableBatchSampler(20, 4, seed=3, epoch=2)) != single


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.service
def test_two_process_ddp_matches_a_single_process_on_the_same_global_batch(tmp_path):
    # DDP alone, and DDP with 4 micro-batches of 1 item per rank: both equal one process taking
    # the global batch of 8 at once, all eight Safe-CLIP terms included; and HySAC, whose head
    # lives outside the DDP-wrapped towers, with 4 micro-batches
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    runs = [("safe-clip", 1), ("safe-clip", 4), ("hysac", 4)]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(worker), str(tmp_path / "ddp"),
                    *[f"{method}:{accum}" for method, accum in runs]],
                   check=True, env=env, timeout=300, capture_output=True)
    subprocess.run([sys.executable, str(worker), str(tmp_path / "single"), "safe-clip:1", "hysac:1"], check=True,
                   env=env, timeout=300, capture_output=True)
    from safetensors.torch import load_file

    for method, accum in runs:
        single = load_file(str(tmp_path / "single" / f"{method}-accum-1" / "rank0.safetensors"))
        initial = load_file(str(tmp_path / "single" / f"{method}-accum-1" / "initial.safetensors"))
        assert any(not torch.equal(single[name], initial[name]) for name in single), "training must move weights"
        if method == "hysac":
            assert not torch.equal(single["method.head.log_curv"], initial["method.head.log_curv"])
        rank0 = load_file(str(tmp_path / "ddp" / f"{method}-accum-{accum}" / "rank0.safetensors"))
        rank1 = load_file(str(tmp_path / "ddp" / f"{method}-accum-{accum}" / "rank1.safetensors"))
        assert rank0.keys() == single.keys()
        # HySAC's distances (acosh near 1) round more than cosines; after 3 Adam steps of 1e-2 that is
        # up to 1e-5 on weights that moved by 2e-2, as between one process with and without accumulation.
        # Micro-batches sum their gradients in another order than one batch; on AVX2-only CPUs that
        # rounding, divided by Adam's sqrt(v) where a gradient is near zero, reached 3.5e-6. HySAC's
        # radial terms (weight 20 of 27) add distances from the origin of the same rounding: 7.9e-5 seen.
        atol = 2e-4 if method == "hysac" else 1e-5 if accum > 1 else 1e-6
        for name in single:
            where = f"{name} ({method}, accum {accum})"
            assert torch.equal(rank0[name], rank1[name]), f"ranks diverged on {where}"
            torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=atol, msg=lambda text: f"{where}: {text}")
