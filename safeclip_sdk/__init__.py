"""safeclip: make CLIP embedding spaces safe for retrieval and generation.

>>> import safeclip_sdk
>>> result = safeclip_sdk.train("cfg.yaml", lr=1e-4)                       # doctest: +SKIP
>>> report = safeclip_sdk.evaluate({"safe": result.model_dir}, "test.jsonl")  # doctest: +SKIP
>>> encoder = safeclip_sdk.Encoder.load("onnx-dir", backend="onnx")          # doctest: +SKIP
>>> hits = safeclip_sdk.search("./qdrant", "photos", "a man with a knife", model="onnx-dir")  # doctest: +SKIP
"""

from importlib import import_module

from .errors import DataError, ExportError, ImageError, ModelLoadError, SafeclipError
from .models import LoadedModel, load_model, save_model_dir

__version__ = "0.1.0"

# Heavier entry points load on first use, so `import safeclip_sdk` stays quick.
_LAZY = {
    "train": "training", "TrainConfig": "config", "load_config": "config",
    "evaluate": "evaluation", "Encoder": "encoder", "embed": "embed", "load_image": "images",
    "export_onnx": "export.onnx", "export_hf": "export.hf", "run_demo": "demo",
    "compare_deployments": "deployment", "search": "search", "SafeSearch": "search",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'safeclip_sdk' has no attribute '{name}'")


__all__ = [
    "DataError", "ExportError", "ImageError", "LoadedModel", "ModelLoadError", "SafeclipError",
    "load_model", "save_model_dir", *_LAZY,
]
