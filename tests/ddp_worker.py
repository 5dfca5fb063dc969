"""Trains 3 steps on synthetic data under torchrun (2 ranks) or alone, and saves each rank's weights.

``ddp_worker.py OUT METHOD:ACCUM...``: one run per method (``safe-clip`` or ``hysac``) and
gradient-accumulation setting (global batch 8 each), written to OUT/METHOD-accum-N/rank{R}.safetensors,
beside the initial weights. HySAC's runs include its head (curvature, scales, logit scale).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from safeclip_sdk.training.ddp import init_distributed, shutdown_distributed
from safeclip_sdk.training.loop import Trainer
from synthetic import SyntheticQuadruplets, make_encoder_and_objective, make_hysac_encoder_and_method, trainer_config

out = Path(sys.argv[1])
torch.set_num_threads(1)
context = init_distributed("cpu")
for run in sys.argv[2:]:
    method, accum = run.split(":")[0], int(run.split(":")[1])
    run_dir = out / f"{method}-accum-{accum}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if method == "hysac":
        encoder, hooks = make_hysac_encoder_and_method()
        objective = hooks.objective(None)
    else:
        (encoder, objective), hooks = make_encoder_and_objective(), None
    config = trainer_config(run_dir, method=method, batch_size=8, grad_accum_steps=accum, max_steps=3, lr=1e-2)
    trainer = Trainer(encoder, objective, SyntheticQuadruplets(32), config, run_dir, context=context, hooks=hooks)
    save_file({k: v.contiguous() for k, v in trainer.trainable_state().items()}, str(run_dir / "initial.safetensors"))
    trainer.fit()
    save_file({k: v.contiguous() for k, v in trainer.trainable_state().items()},
              str(run_dir / f"rank{context.rank}.safetensors"))
shutdown_distributed(context)
