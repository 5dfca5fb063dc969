"""safeclip: make CLIP embedding spaces safe for retrieval and generation.

>>> import safeclip_sdk
>>> result = safeclip_sdk.train("cfg.yaml", lr=1e-4)                       # doctest: +SKIP
>>> report = safeclip_sdk.evaluate({"safe": result.model_dir}, "test.jsonl")  # doctest: +SKIP
>>> encoder = safeclip_sdk.Encoder.load("onnx-dir", backend="onnx")          # doctest: +SKIP
>>> hits = safeclip_sdk.search("./qdrant", "photos", "a man with a knife", model="onnx-dir")  # doctest: +SKIP
"""

from importlib import import_module

from ._utils.version import __version__
from .errors import DataError, ExportError, ImageError, ModelLoadError, SafeclipError
from .model.folder import LoadedModel, save_model_dir

# Heavier entry points load on first use, so `import safeclip_sdk` stays quick.
_LAZY = {
    "train": "training.run", "TrainConfig": "training.config", "load_config": "training.config",
    "evaluate": "evaluation.protocol", "compare_deployments": "evaluation.deployment",
    "export_onnx": "export.onnx", "export_hf": "export.hf",
    "Encoder": "runtime.encoder", "embed": "runtime.embed", "classify": "runtime.classify",
    "moderate": "runtime.classify", "serve": "serve",
    "load_image": "data.images",
    "open_store": "integrations", "search": "index.search", "SafeSearch": "index.search",
    "audit": "index.audit",
    "reindex": "index.reindex", "complete_point": "index.reindex",
    "run_demo": "demo.run",
    "load_model": "methods:load_checked_model",
}


def __getattr__(name):
    if name in _LAZY:
        module, _, attribute = _LAZY[name].partition(":")
        return getattr(import_module(f".{module}", __name__), attribute or name)
    raise AttributeError(f"module 'safeclip_sdk' has no attribute '{name}'")


__all__ = [
    "DataError", "ExportError", "ImageError", "LoadedModel", "ModelLoadError", "SafeclipError", "__version__",
    "load_model", "save_model_dir", *_LAZY,
]
