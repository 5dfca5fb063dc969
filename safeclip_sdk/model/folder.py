"""Loading base CLIP models from every place users keep them, and saving model folders.

A model source is one of:
- an open_clip architecture name with an optional pretrained tag or checkpoint file
  (``ViT-L-14-quickgelu`` + ``openai``, ``ViT-B-32`` + ``/path/ckpt.safetensors``);
- ``hf-hub:org/repo`` (an open_clip repository on the Hugging Face hub);
- ``local-dir:/path`` or a plain folder holding ``open_clip_config.json`` + weights (this is also
  the layout safeclip writes, so a trained model loads back the same way);
- a Hugging Face ``CLIPModel`` folder (``config.json`` + ``model.safetensors``), converted into
  the open_clip module.

A folder written by :func:`save_model_dir` records the sha256 of its weights file in
``safeclip.json`` (``"weights": {"file", "sha256"}``); loading refuses a file that no longer
matches. A per-category classifier fitted on the folder's embeddings is recorded the same way
(``"category_classifier"``, see ``category_classifier.py``). ``safeclip.json`` also records the
method that trained the model, its embedding space
(``"embedding_space"``, see ``safeclip_sdk.model.spaces``; cosine when absent) and the method's
own keys: ``safeclip_sdk.methods.inference_of`` reads and checks those for whoever uses the model
(the Encoder, export, evaluation). Folders without that record (older safeclip folders, plain
open_clip ``local-dir:`` folders) load unchecked. Weights files that cannot be used (truncated or corrupt, tensors that
do not fit the config, a pickle that ``weights_only`` loading refuses) raise one line naming
the file.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._utils.files import atomic_write, atomic_write_text, file_sha256
from ..errors import ModelLoadError
from .architectures import build_model, open_clip_module, read_json
from .hf_convert import HF_CONFIG, load_hf_clip_dir

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
METADATA_FILE = "safeclip.json"
# the weights files open_clip looks for in a local-dir: folder, in its order of preference
LOCAL_DIR_WEIGHTS = (OPEN_CLIP_WEIGHTS, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                     "open_clip_pytorch_model.pth")

MetadataCheck = Callable[[dict[str, Any], int, str], object]
"""``check(metadata, embed_dim, where)``: raises ModelLoadError when a folder's ``safeclip.json`` is unusable."""


@dataclass
class LoadedModel:
    """An open_clip CLIP module with everything needed to rebuild or save it."""

    model: torch.nn.Module
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    source: str
    pretrained: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess(self):
        """The evaluation image transform, exactly as open_clip builds it."""
        open_clip_module()
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**self.preprocess_cfg), is_train=False)

    @property
    def tokenizer(self):
        open_clip = open_clip_module()
        text_cfg = self.model_cfg.get("text_cfg", {})
        if text_cfg.get("hf_tokenizer_name"):
            from open_clip.tokenizer import HFTokenizer

            return HFTokenizer(
                text_cfg["hf_tokenizer_name"],
                context_length=text_cfg.get("context_length", 77),
                **text_cfg.get("tokenizer_kwargs", {}),
            )
        return open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))

    @property
    def context_length(self) -> int:
        return int(self.model_cfg.get("text_cfg", {}).get("context_length", 77))

    @property
    def image_size(self) -> int:
        size = self.preprocess_cfg["size"]
        return int(size[0] if isinstance(size, (list, tuple)) else size)


def _preprocess_cfg_of(model: torch.nn.Module) -> dict[str, Any]:
    open_clip = open_clip_module()
    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    return {key: list(value) if isinstance(value, tuple) else value for key, value in cfg.items()}


def _is_hf_clip_dir(path: Path) -> bool:
    config_path = path / HF_CONFIG
    if not config_path.is_file():
        return False
    config = read_json(config_path)
    return config.get("model_type") == "clip" or "CLIPModel" in config.get("architectures", [])


def _load_local_dir(path: Path, source: str, device: str | torch.device,
                    check_metadata: MetadataCheck | None) -> LoadedModel:
    open_clip = open_clip_module()
    config = read_json(path / OPEN_CLIP_CONFIG)
    if "model_cfg" not in config:
        raise ModelLoadError(f"{path / OPEN_CLIP_CONFIG}: missing 'model_cfg'")
    weights = next((path / name for name in LOCAL_DIR_WEIGHTS if (path / name).is_file()), None)
    if weights is None:
        raise ModelLoadError(f"{path}: open_clip_config.json found but no weights file ({OPEN_CLIP_WEIGHTS})")
    metadata_path = path / METADATA_FILE
    metadata = read_json(metadata_path) if metadata_path.is_file() else {}
    verify_weights(path, metadata)
    if check_metadata is not None:
        check_metadata(metadata, int(config["model_cfg"]["embed_dim"]), str(metadata_path))
    with weights_errors(weights):
        model = open_clip.create_model(f"local-dir:{path}", device=device, weights_only=True)
    preprocess_cfg = _preprocess_cfg_of(model)
    return LoadedModel(model, config["model_cfg"], preprocess_cfg, source, None, metadata)


def verify_weights(folder: Path, metadata: dict[str, Any]) -> None:
    """ModelLoadError unless the weights file recorded in ``safeclip.json`` still has its sha256.

    A folder whose metadata records no ``weights`` entry passes unchecked.
    """
    entry = metadata.get("weights") if isinstance(metadata, dict) else None
    if entry is None:
        return
    where = folder / METADATA_FILE
    if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str)):
        raise ModelLoadError(f"{where}: 'weights' must be {{\"file\": name, \"sha256\": hex digest}}")
    name = entry["file"]
    if Path(name).name != name or name in ("", ".", ".."):
        raise ModelLoadError(f"{where}: 'weights.file' must be a file name inside the folder, got {name!r}")
    weights = folder / name
    if not weights.is_file():
        raise ModelLoadError(f"{weights}: listed in {METADATA_FILE} but missing")
    actual = file_sha256(weights)
    if actual != entry["sha256"]:
        raise ModelLoadError(f"{weights}: sha256 {actual[:12]}... does not match {entry['sha256'][:12]}... recorded "
                             f"in {METADATA_FILE} (the file changed after the folder was saved)")


_SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) "
                            r"from checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)")
_KEYS = re.compile(r"(Missing|Unexpected) key\(s\) in state_dict: ((?:\"[^\"]*\"(?:, )?)+)")


@contextmanager
def weights_errors(weights: str | os.PathLike) -> Iterator[None]:
    """Turn what torch, safetensors and open_clip raise on a bad weights file into one line
    naming the file (never torch's advice to turn ``weights_only`` off)."""
    from safetensors import SafetensorError

    try:
        with warnings.catch_warnings():
            # torch's warning on pickle protocols above 2 would print beside safeclip's one-line error
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            yield
    except ModelLoadError:
        raise
    except pickle.UnpicklingError as error:
        needed = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        detail = f" (it needs {needed.group(1)})" if needed else ""
        raise ModelLoadError(f"{weights}: refused: the file holds pickled Python objects{detail}, which safe "
                             f"loading (weights_only) does not run; save the weights as safetensors") from error
    except SafetensorError as error:
        raise ModelLoadError(f"{weights}: corrupt or truncated safetensors file ({_first_line(error)})") from error
    except RuntimeError as error:
        raise ModelLoadError(f"{weights}: {_state_dict_problem(error)}") from error
    except (OSError, EOFError, ValueError) as error:
        raise ModelLoadError(f"{weights}: cannot read the weights ({_first_line(error)})") from error


def _shape_mismatch(name: str, weights: str) -> str | None:
    """The first tensor of a safetensors file whose shape differs from architecture ``name``'s."""
    from safetensors import SafetensorError, safe_open

    expected = {key: list(value.shape) for key, value in open_clip_module().create_model(name).state_dict().items()}
    try:
        with safe_open(weights, framework="pt") as file:
            for key in file.keys():
                shape = list(file.get_slice(key).get_shape())
                if key in expected and shape != expected[key]:
                    return f"tensor '{key}' has shape {shape} but {name} needs {expected[key]}"
    except SafetensorError:
        return None
    return None


def _state_dict_problem(error: RuntimeError) -> str:
    text = str(error)
    mismatches = _SIZE_MISMATCH.findall(text)
    if mismatches:
        name, in_file, in_model = mismatches[0]
        more = f" (and {len(mismatches) - 1} more tensor{'s' if len(mismatches) > 2 else ''})" \
            if len(mismatches) > 1 else ""
        return (f"tensor '{name}' has shape {in_file} but the model config needs {in_model}{more}: "
                f"the weights belong to another architecture")
    keys = {kind: re.findall(r'"([^"]*)"', names) for kind, names in _KEYS.findall(text)}
    if keys:
        parts = [f"{kind.lower()} tensors {', '.join(repr(k) for k in names[:3])}"
                 + (f" (+{len(names) - 3} more)" if len(names) > 3 else "") for kind, names in keys.items()]
        return f"the tensors do not fit the model config: {'; '.join(parts)}"
    if "PytorchStreamReader" in text:  # torch's checkpoints are zip files
        return f"corrupt or truncated checkpoint ({_first_line(error).split('. ')[0]})"
    return _first_line(error)


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _load_hf_clip_dir(path: Path, source: str, device: str | torch.device) -> LoadedModel:
    model_cfg, preprocess_cfg, state_dict = load_hf_clip_dir(path)
    model = build_model(model_cfg, preprocess_cfg, device=device)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{path}: Hugging Face weights do not fit the converted architecture "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return LoadedModel(model, model_cfg, preprocess_cfg, source, None, {})


def load_model(source: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
               check_metadata: MetadataCheck | None = None) -> LoadedModel:
    """Load a CLIP model from any supported source (see module docstring) in fp32 eval mode.

    ``check_metadata`` runs on a model folder's ``safeclip.json`` before its weights load (the
    methods layer checks the method's keys with it: ``safeclip_sdk.load_model``)."""
    open_clip_module()  # safeclip's architectures are registered before any name lookup
    if source.startswith("hf-hub:"):
        loaded = _load_hf_hub(source, device)
    else:
        local = Path(source.removeprefix("local-dir:")).expanduser()
        if source.startswith("local-dir:") or local.is_dir():
            if not local.is_dir():
                raise ModelLoadError(f"{source}: folder not found")
            if (local / OPEN_CLIP_CONFIG).is_file():
                loaded = _load_local_dir(local, source, device, check_metadata)
            elif _is_hf_clip_dir(local):
                loaded = _load_hf_clip_dir(local, source, device)
            else:
                raise ModelLoadError(f"{local}: neither an open_clip folder ({OPEN_CLIP_CONFIG}) "
                                     f"nor a Hugging Face CLIPModel folder ({HF_CONFIG})")
        else:
            loaded = _load_architecture(source, pretrained, device)
    loaded.model.eval()
    return loaded


def _load_architecture(name: str, pretrained: str | None, device) -> LoadedModel:
    open_clip = open_clip_module()
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ModelLoadError(f"unknown model '{name}': not an open_clip architecture, an hf-hub: id "
                             f"or an existing folder (see `open_clip.list_models()`)")
    if pretrained and not Path(pretrained).is_file() and not open_clip.get_pretrained_cfg(name, pretrained):
        tags = [tag for arch, tag in open_clip.list_pretrained() if arch == name]
        raise ModelLoadError(f"pretrained '{pretrained}' for {name}: neither a file nor a known tag "
                             f"(known: {', '.join(tags) or 'none'})")
    if pretrained and Path(pretrained).is_file():
        with weights_errors(pretrained):
            try:
                model = open_clip.create_model(name, pretrained=pretrained, device=device, weights_only=True)
            except AssertionError as error:  # open_clip's resize of a position embedding of another width
                raise ModelLoadError(f"{pretrained}: {_shape_mismatch(name, pretrained) or _first_line(error)}: "
                                     f"the weights belong to another architecture than {name}") from error
    else:
        try:
            model = open_clip.create_model(name, pretrained=pretrained or None, device=device, weights_only=True)
        except (RuntimeError, OSError) as error:
            raise ModelLoadError(f"{name} ({pretrained}): {_first_line(error)}") from error
    return LoadedModel(model, dict(model_cfg), _preprocess_cfg_of(model), name, pretrained)


def _load_hf_hub(source: str, device) -> LoadedModel:
    """An hf-hub: id: an open_clip repository, or a transformers CLIPModel repository."""
    from huggingface_hub import snapshot_download

    repo_id = source.removeprefix("hf-hub:")
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as error:  # huggingface_hub raises many types; all mean "not reachable here"
        raise ModelLoadError(f"{source}: cannot download ({type(error).__name__}: {error})") from error
    if (folder / OPEN_CLIP_CONFIG).is_file():
        loaded = _load_local_dir(folder, source, device)
    elif _is_hf_clip_dir(folder):
        loaded = _load_hf_clip_dir(folder, source, device)
    else:
        raise ModelLoadError(f"{source}: the repository holds neither open_clip nor CLIPModel weights")
    return loaded


def save_model_dir(out_dir: str | os.PathLike, model: torch.nn.Module, model_cfg: dict[str, Any],
                   preprocess_cfg: dict[str, Any], metadata: dict[str, Any] | None = None,
                   model_card: str | None = None) -> Path:
    """Write an open_clip ``local-dir:`` folder: config, safetensors weights, safeclip.json, card.

    ``safeclip.json`` holds ``metadata`` plus the sha256 of the weights file (``"weights"``),
    which :func:`load_model` checks. Each file is written to a temporary name and renamed, so a
    crash never leaves a torn file.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    atomic_write(out / OPEN_CLIP_WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    atomic_write_text(out / OPEN_CLIP_CONFIG, json.dumps(config, indent=2))
    weights = {"file": OPEN_CLIP_WEIGHTS, "sha256": file_sha256(out / OPEN_CLIP_WEIGHTS)}
    metadata = {**(metadata or {}), "weights": weights}
    atomic_write_text(out / METADATA_FILE, json.dumps(metadata, indent=2, default=str))
    if model_card is not None:
        atomic_write_text(out / "README.md", model_card)
    logging.getLogger(__name__).info("saved model folder %s", out)
    return out
