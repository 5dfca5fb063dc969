"""``safeclip train``: the run (``run.py``), the shared loop (``loop.py``), its config, checkpoints,
batch order, DDP and LoRA, and the published recipes (``recipes/``)."""
