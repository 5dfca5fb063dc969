"""safeclip: make CLIP embedding spaces safe for retrieval and generation."""

from .errors import DataError, ExportError, ModelLoadError, SafeclipError
from .models import LoadedModel, load_model, save_model_dir

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "ExportError",
    "LoadedModel",
    "ModelLoadError",
    "SafeclipError",
    "load_model",
    "save_model_dir",
]
