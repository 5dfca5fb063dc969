"""The demo's settings (full and ``--quick``) and the fine-tuning run every method gets in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..methods import get_method
from ..training.config import DataConfig, LoraConfig, TrainConfig


@dataclass(frozen=True)
class DemoSettings:
    n_train: int = 3000
    n_val: int = 300
    n_test: int = 500
    base_architecture: str = "safeclip-demo"
    base_steps: int = 700
    base_batch_size: int = 64
    base_lr: float = 1e-3
    safe_epochs: int = 3
    safe_batch_size: int = 64
    safe_lr: float = 1e-3
    lora_rank: int = 16
    search_queries: int = 3


# Small enough for a test to run every stage in seconds; the numbers mean nothing.
QUICK_SETTINGS = DemoSettings(n_train=48, n_val=16, n_test=24, base_architecture="safeclip-tiny", base_steps=3,
                              base_batch_size=16, safe_epochs=1, safe_batch_size=16, lora_rank=4)


def method_config(method: str, out: Path, base_dir: Path, world: dict[str, Path], settings: DemoSettings, *,
                  device: str, seed: int) -> TrainConfig:
    """The demo's fine-tuning run of ``method`` from the base in ``base_dir``, into ``out/METHOD``:
    every method gets the same LoRA, batch size, learning rate and seed, the demo's epochs times
    its ``schedule_factor``, and its own config section at its defaults."""
    run_dir = out / method
    return TrainConfig(
        method=method, base_model=str(base_dir), pretrained=None, output_dir=str(run_dir),
        data=DataConfig(train=str(world["train"]), val=str(world["val"])),
        lora=LoraConfig(rank=settings.lora_rank, alpha=float(settings.lora_rank), dropout=0.1,
                        targets=["attn", "c_fc", "c_proj", "conv1"]),
        epochs=settings.safe_epochs * get_method(method).schedule_factor, batch_size=settings.safe_batch_size,
        lr=settings.safe_lr,
        device=device, seed=seed, checkpoint_every=50, early_stopping_patience=2,
        resume=(run_dir / "checkpoints" / "latest").is_file())
