"""The offline demo: a generated world, a base CLIP trained on it, every stage of safeclip run on it."""
