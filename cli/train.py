"""``safeclip train``: a thin wrapper over :func:`safeclip_sdk.training.run.train`."""

from __future__ import annotations

import click

from safeclip_sdk.training.config import parse_override
from safeclip_sdk.methods import available_methods

# CLI option -> config key; every option left unset keeps the YAML file's (or default) value.
OPTION_KEYS = {
    "method": "method", "base_model": "base_model", "pretrained": "pretrained", "train_data": "data.train",
    "val_data": "data.val", "image_root": "data.image_root", "unsafe_image_root": "data.unsafe_image_root",
    "output_dir": "output_dir", "epochs": "epochs", "max_steps": "max_steps", "batch_size": "batch_size",
    "grad_accum_steps": "grad_accum_steps", "lr": "lr", "lr_schedule": "lr_schedule", "warmup_steps": "warmup_steps",
    "lora_rank": "lora.rank", "towers": "lora.towers",
    "precision": "precision", "device": "device", "seed": "seed", "checkpoint_every": "checkpoint_every",
    "num_workers": "data.num_workers",
}


@click.command(context_settings={"show_default": True})
@click.option("-c", "--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML config; options below override it.")
@click.option("--method", type=click.Choice(available_methods()),
              help="Safety method; its settings are its config section (see --set).")
@click.option("--base-model", help="open_clip architecture, hf-hub:org/repo, or a model folder.")
@click.option("--pretrained", help="open_clip pretrained tag or checkpoint file for --base-model.")
@click.option("--train-data", help="Training quadruplets: ViSU .json or generic .jsonl.")
@click.option("--val-data", help="Validation quadruplets (early stopping).")
@click.option("--image-root", help="COCO root for ViSU files (holds train2017/ and val2017/).")
@click.option("--unsafe-image-root", help="Folder of unsafe images for ViSU files, if you have them.")
@click.option("-o", "--output-dir", help="Run folder; the model is written to OUTPUT_DIR/model.")
@click.option("--epochs", type=int)
@click.option("--max-steps", type=int)
@click.option("--batch-size", type=int, help="Global batch per optimizer step (all GPUs, all micro-batches).")
@click.option("--grad-accum-steps", type=int, help="Micro-batches per optimizer step (exact: same gradient as one batch).")
@click.option("--lr", type=float)
@click.option("--lr-schedule", type=click.Choice(["cosine", "constant"]), help="After warm-up: cosine decay to 0, or constant.")
@click.option("--warmup-steps", type=int, help="Optimizer steps of linear learning-rate warm-up.")
@click.option("--lora-rank", type=int)
@click.option("--towers", type=click.Choice(["both", "text"]), help="Which encoders get LoRA adapters.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]))
@click.option("--device", help="auto, cpu, cuda, cuda:1 ...")
@click.option("--seed", type=int)
@click.option("--checkpoint-every", type=int, help="Optimizer steps between checkpoints.")
@click.option("--num-workers", type=int, help="DataLoader worker processes.")
@click.option("--skip-bad", is_flag=True, default=None, help="Skip bad dataset rows (listed in report.json).")
@click.option("--resume", is_flag=True, default=None, help="Continue the run in OUTPUT_DIR from its last checkpoint.")
@click.option("--require-safer", is_flag=True, default=None,
              help="Exit non-zero when the verdict (the model against its base on the validation split) says the "
                   "model is not safer; the model folder is written either way.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Any other config key, e.g. --set lora.alpha=32 (a method's settings: --set SECTION.key=value, "
                   "SECTION the method's config section, as in the recipes).")
def command(config_file, skip_bad, resume, require_safer, assignments, **options):
    """Fine-tune a base CLIP with a safety method and write a merged model folder.

    \b
    safeclip train -c cfg.yaml --method safer-clip --set safer_clip.tau=0.02
    Multi-GPU: torchrun --nproc-per-node 8 -m safeclip_sdk train -c cfg.yaml
    """
    from safeclip_sdk.training.run import train

    overrides = {OPTION_KEYS[name]: value for name, value in options.items() if value is not None}
    if skip_bad:
        overrides["data.skip_bad"] = True
    if resume:
        overrides["resume"] = True
    if require_safer:
        overrides["require_safer"] = True
    overrides.update(parse_override(text) for text in assignments)
    result = train(config_file, **overrides)
    click.echo(f"model written to {result.model_dir}")
    if result.verdict is not None:
        click.echo(f"\n{result.verdict.table()}\n\nverdict: {result.verdict.headline()}")
    skipped = len(result.report["bad_rows"]["train"]) + len(result.report["bad_rows"]["val"])
    if skipped:
        click.echo(f"{skipped} bad rows skipped (listed in {result.run_dir / 'report.json'})")
