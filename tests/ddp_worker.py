"""Trains 3 steps on synthetic data; run under torchrun (2 ranks) or alone, saves each rank's weights."""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from safeclip_sdk.distributed import init_distributed, shutdown_distributed
from safeclip_sdk.trainer import Trainer
from synthetic import SyntheticQuadruplets, make_encoder_and_objective, trainer_config

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
context = init_distributed("cpu")
encoder, objective = make_encoder_and_objective()
config = trainer_config(out, batch_size=8, max_steps=3, lr=1e-2)
trainer = Trainer(encoder, objective, SyntheticQuadruplets(32), config, out, context=context)
save_file({k: v.contiguous() for k, v in trainer.trainable_state().items()}, str(out / "initial.safetensors"))
trainer.fit()
save_file({k: v.contiguous() for k, v in trainer.trainable_state().items()}, str(out / f"rank{context.rank}.safetensors"))
shutdown_distributed(context)
