import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safeclip_sdk.config import SAFE_CLIP_REFERENCE_WEIGHTS
from safeclip_sdk.sampling import ResumableBatchSampler
from safeclip_sdk.trainer import Trainer

from synthetic import SyntheticQuadruplets, make_encoder_and_objective, trainer_config

# Cosine terms are means over items, so they split exactly across micro-batches; contrastive
# terms use in-batch negatives and by definition depend on how a batch is cut.
COSINE_ONLY = {name: (weight if name.endswith("_cos") else 0.0) for name, weight in SAFE_CLIP_REFERENCE_WEIGHTS.items()}


def _gradients(trainer):
    return {name: p.grad.clone() for name, p in trainer.parameters.items()}


def test_accumulated_micro_batches_give_the_gradient_of_one_large_batch(tmp_path):
    data = SyntheticQuadruplets(8)
    batch = {key: torch.stack([data[i][key] for i in range(8)]) for key in ("safe_image", "unsafe_image",
                                                                            "safe_text", "unsafe_text")}
    micro_batches = [{key: value[i:i + 2] for key, value in batch.items()} for i in range(0, 8, 2)]

    encoder, objective = make_encoder_and_objective(loss_weights=COSINE_ONLY)
    one_batch = Trainer(encoder, objective, data, trainer_config(tmp_path / "a"), tmp_path / "a")
    # move the LoRA B matrices off zero so every LoRA parameter gets a non-zero gradient
    torch.manual_seed(1)
    with torch.no_grad():
        for p in one_batch.parameters.values():
            p.add_(0.05 * torch.randn_like(p))
    state = one_batch.trainable_state()
    one_batch.accumulate_gradients([batch])

    encoder, objective = make_encoder_and_objective(loss_weights=COSINE_ONLY)
    accumulated = Trainer(encoder, objective, data, trainer_config(tmp_path / "b", grad_accum_steps=4),
                          tmp_path / "b")
    accumulated.load_trainable_state(state)
    accumulated.accumulate_gradients(micro_batches)

    expected, got = _gradients(one_batch), _gradients(accumulated)
    assert expected.keys() == got.keys()
    assert any(g.abs().max() > 0 for g in expected.values())
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-7, msg=name)


class _Interrupt(Exception):
    pass


def _stop_after(step):
    def callback(trainer):
        if trainer.progress.step == step:
            raise _Interrupt
    return callback


def test_interrupted_then_resumed_run_ends_with_the_same_weights(tmp_path):
    # dropout on: the resumed run must also restore the random state to draw the same masks
    config = dict(batch_size=4, epochs=2, checkpoint_every=2)
    data = SyntheticQuadruplets(16)

    encoder, objective = make_encoder_and_objective(lora_dropout=0.1)
    straight = Trainer(encoder, objective, data, trainer_config(tmp_path / "straight", **config), tmp_path / "straight")
    straight.fit()
    assert straight.progress.step == 8

    run_dir = tmp_path / "interrupted"
    encoder, objective = make_encoder_and_objective(lora_dropout=0.1)
    first = Trainer(encoder, objective, data, trainer_config(run_dir, **config), run_dir,
                    callbacks=[_stop_after(5)])
    with pytest.raises(_Interrupt):
        first.fit()
    assert (run_dir / "checkpoints" / "latest").read_text() == "step-00000004"
    assert not list((run_dir / "checkpoints").glob(".tmp*"))

    # a new process: same base weights (they come from the pretrained checkpoint), LoRA weights
    # scrambled so that only the checkpoint can bring them back
    encoder, objective = make_encoder_and_objective(lora_dropout=0.1)
    resumed = Trainer(encoder, objective, data, trainer_config(run_dir, **config), run_dir)
    with torch.no_grad():
        for p in resumed.parameters.values():
            p.normal_()
    assert resumed.resume()
    assert resumed.progress.step == 4
    resumed.fit()
    assert resumed.progress.step == 8
    for name, value in straight.trainable_state().items():
        torch.testing.assert_close(resumed.trainable_state()[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_early_stopping_stops_when_the_validation_metric_does_not_improve(tmp_path):
    # lr 0: the validation loss cannot improve after the first epoch
    data = SyntheticQuadruplets(8)
    encoder, objective = make_encoder_and_objective()
    trainer = Trainer(encoder, objective, data, trainer_config(tmp_path, lr=0.0, epochs=5, batch_size=4,
                                                               early_stopping_patience=1),
                      tmp_path, val_dataset=SyntheticQuadruplets(8, seed=5))
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
def test_two_process_ddp_matches_a_single_process_on_the_same_global_batch(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                    "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(worker), str(tmp_path / "ddp")],
                   check=True, env=env, timeout=300, capture_output=True)
    subprocess.run([sys.executable, str(worker), str(tmp_path / "single")], check=True, env=env, timeout=300,
                   capture_output=True)
    from safetensors.torch import load_file

    rank0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    single = load_file(str(tmp_path / "single" / "rank0.safetensors"))
    initial = load_file(str(tmp_path / "single" / "initial.safetensors"))
    assert any(not torch.equal(single[name], initial[name]) for name in single), "training must move weights"
    for name in single:
        assert torch.equal(rank0[name], rank1[name]), f"ranks diverged on {name}"
        torch.testing.assert_close(rank0[name], single[name], rtol=1e-4, atol=1e-6, msg=name)
