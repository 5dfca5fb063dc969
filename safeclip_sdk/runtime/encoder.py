"""One embedding API over four runtimes: torch (open_clip), onnxruntime, OpenVINO and TensorRT.

>>> encoder = Encoder.load("runs/safe-clip", backend="torch")
>>> encoder = Encoder.load("exports/safe-clip-onnx", backend="onnx", precision="int8")
>>> encoder = Encoder.load("exports/safe-clip-onnx", backend="auto")   # the fastest variant measured at export
>>> text_embeddings = encoder.encode_text(["a photo of a cat"])
>>> image_embeddings = encoder.encode_image(["cat.jpg", open("dog.png", "rb").read()])

Every backend gets the same pixels (``preprocess_image``, equal to open_clip's eval transform) and
the same token ids (open_clip's tokenizers), and returns float32 embeddings in the model's space
(``encoder.space``, read from ``safeclip.json`` or the export manifest): L2-normalised rows for
cosine models; for another space (a hyperbolic one, say) whatever its ``embed`` computes, in the
torch runtime and inside the exported graphs alike. ``encoder.inference`` is what the model's
method adds (classifier, query transformation; see ``safeclip_sdk.methods.inference``), and
``encoder.category_classifier`` the per-category classifier fitted on its embeddings, if any (see
``safeclip_sdk.model.category_classifier``): the stored heads for a model folder, the exported
graph for an ONNX export.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
from tqdm.auto import tqdm

from .._utils.devices import resolve_device
from ..errors import DataError, ExportError, ModelLoadError
from ..data.images import DEFAULT_MAX_PIXELS, ImageError, ImageInput, describe_item, load_image, preprocess_image
from ..export.manifest import MANIFEST_NAME, load_manifest
from ..methods import Inference, load_checked_model, model_inference
from ..model.category_classifier import CategoryClassifier, load_folder_classifier
from ..model.architectures import open_clip_module
from ..model.spaces import EmbeddingSpace, cosine_space
from .category_onnx import exported_classifier

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx", "openvino", "tensorrt")
AUTO_BACKEND = "auto"
PRECISIONS = ("fp32", "fp16", "int8")


class ImageFailure(NamedTuple):
    """An input image that could not be embedded."""

    index: int
    item: str
    reason: str


@dataclass
class BatchResult:
    """Embeddings of the images that could be read, and why the others could not.

    ``embeddings[k]`` belongs to input ``indices[k]``.
    """

    embeddings: np.ndarray
    indices: list[int] = field(default_factory=list)
    failures: list[ImageFailure] = field(default_factory=list)


class _Runtime(Protocol):
    device: str

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray: ...

    def encode_tokens(self, input_ids: np.ndarray) -> np.ndarray: ...


class Encoder:
    """Text and image embeddings from a safeclip model folder or ONNX/TensorRT export.

    Build it with :meth:`Encoder.load`.
    """

    def __init__(self, runtime: _Runtime, *, backend: str, embed_dim: int, image_cfg: dict[str, Any],
                 tokenizer, context_length: int, batch_size: int = 32, providers: list[str] | None = None,
                 num_workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 inference: Inference | None = None, category_classifier: CategoryClassifier | None = None):
        self._runtime = runtime
        self.backend = backend
        self.embed_dim = int(embed_dim)
        # what the model's method does after training: its space, classifier, query transformation
        self.inference = inference or Inference(cosine_space(self.embed_dim))
        # the per-category classifier fitted on this model's embeddings (safeclip classify fit), or None
        self.category_classifier = category_classifier
        self.image_cfg = dict(image_cfg)
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.batch_size = int(batch_size)
        self.providers = providers
        self.max_pixels = max_pixels
        self._num_workers = num_workers or min(8, os.cpu_count() or 1)
        # where it was loaded from (a folder's absolute path), recorded by a reindex; None when built directly
        self.source: str | None = None
        self.precision = "fp32"  # the variant Encoder.load chose

    @property
    def device(self) -> str:
        return self._runtime.device

    @property
    def space(self) -> EmbeddingSpace:
        """How vectors are compared and stored in a vector database (see ``safeclip_sdk.model.spaces``)."""
        return self.inference.space

    @classmethod
    def load(cls, path: str | os.PathLike, backend: str = "torch", *, device: str = "auto",
             precision: str | None = None, batch_size: int = 32, num_threads: int | None = None,
             providers: list[str] | None = None, num_workers: int | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Encoder:
        """Load an encoder.

        Args:
            path: for ``torch``, a model folder or any source ``safeclip_sdk.model.folder.load_model``
                accepts; for ``onnx``, ``openvino`` and ``tensorrt``, an export folder with
                ``manifest.json`` (file hashes are verified).
            backend: ``torch``, ``onnx``, ``openvino``, ``tensorrt``, or ``auto``: the fastest runtime
                and variant ``path`` allows (see :func:`fastest_variant`).
            device: ``auto`` (GPU when one is usable), ``cpu`` or ``cuda``/``cuda:N``.
            precision: ``fp32`` (the default); ``fp16`` (torch on CUDA, or an exported fp16 variant);
                ``int8`` (an exported int8 variant). With ``backend="auto"`` and no precision, the
                fastest variant of any precision.
            batch_size: default number of items per forward pass.
            num_threads: onnxruntime intra-op / OpenVINO inference threads (default: the runtime's choice).
            providers: onnxruntime execution providers, overriding the automatic choice.
            num_workers: threads decoding and preprocessing images.
            max_pixels: larger images are refused (decompression bomb guard, read from the header).
        """
        if backend == AUTO_BACKEND:
            backend, fastest_precision = fastest_variant(path, device, precision)
            precision = precision or fastest_precision
        precision = precision or "fp32"
        if backend not in BACKENDS:
            raise ModelLoadError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)}, {AUTO_BACKEND})")
        if precision not in PRECISIONS:
            raise ModelLoadError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
        if batch_size < 1:
            raise ModelLoadError(f"batch_size must be at least 1, got {batch_size}")
        options = {"batch_size": batch_size, "num_workers": num_workers, "max_pixels": max_pixels}
        if backend == "torch":
            encoder = cls._load_torch(path, device, precision, options)
        else:
            encoder = cls._load_export(Path(path), backend, device, precision, num_threads, providers, options)
        encoder.source = str(Path(path).resolve()) if Path(path).exists() else os.fspath(path)
        encoder.precision = precision
        return encoder

    @classmethod
    def _load_torch(cls, source, device: str, precision: str, options: dict[str, Any]) -> Encoder:
        runtime = _TorchRuntime(source, device, precision)
        loaded = runtime.loaded
        return cls(runtime, backend="torch", embed_dim=loaded.model_cfg["embed_dim"],
                   image_cfg=loaded.preprocess_cfg, tokenizer=loaded.tokenizer,
                   context_length=loaded.context_length, inference=runtime.inference,
                   category_classifier=runtime.category_classifier, **options)

    @classmethod
    def _load_export(cls, folder: Path, backend: str, device: str, precision: str, num_threads: int | None,
                     providers: list[str] | None, options: dict[str, Any]) -> Encoder:
        manifest = load_manifest(folder, verify_hashes=True)
        if backend == "onnx":
            runtime = _OnnxRuntime(folder, manifest, precision, device, providers, num_threads)
        elif backend == "openvino":
            from .openvino import OpenVinoRuntime

            runtime = OpenVinoRuntime(folder, manifest, precision, device, num_threads)
        else:
            runtime = _TensorRTRuntime(folder, manifest, device, precision)
        text = manifest.text
        tokenizer = _tokenizer_from_spec(text["tokenizer"], int(text["context_length"]),
                                         text.get("tokenizer_kwargs", {}))
        return cls(runtime, backend=backend, embed_dim=manifest.embed_dim, image_cfg=manifest.image,
                   tokenizer=tokenizer, context_length=int(text["context_length"]),
                   providers=getattr(runtime, "providers", None), inference=manifest.inference(folder),
                   category_classifier=exported_classifier(folder, manifest), **options)

    # --- model only: already preprocessed inputs ---

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Embed preprocessed pixels (float32 [B, 3, H, W], as ``preprocess_image`` makes them)."""
        return self._finish(self._runtime.encode_pixels(np.ascontiguousarray(pixels, dtype=np.float32)))

    def encode_input_ids(self, input_ids: np.ndarray) -> np.ndarray:
        """Embed tokenised texts (int64 [B, context_length])."""
        return self._finish(self._runtime.encode_tokens(np.ascontiguousarray(input_ids, dtype=np.int64)))

    def _finish(self, embeddings: np.ndarray) -> np.ndarray:
        """float32 rows; unit rows re-normalised (reduced-precision runtimes drift off the sphere)."""
        return _unit_rows(embeddings) if self.space.normalizes else np.asarray(embeddings, dtype=np.float32)

    # --- text ---

    def encode_text(self, texts: Sequence[str], *, batch_size: int | None = None,
                    progress: bool = False) -> np.ndarray:
        """Embed texts: float32 array [N, embed_dim] in the model's space (unit norm for cosine).

        Texts longer than the context length are truncated as open_clip does; one warning per call
        says how many. An empty text raises ``DataError`` naming its index.
        """
        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise DataError(f"text #{index}: expected a string, got {type(text).__name__}")
            if not text.strip():
                raise DataError(f"text #{index}: empty text")
        out = np.empty((len(texts), self.embed_dim), dtype=np.float32)
        truncated = 0
        batch_size = batch_size or self.batch_size
        with tqdm(total=len(texts), unit="text", disable=not progress) as bar:
            for start in range(0, len(texts), batch_size):
                batch = texts[start:start + batch_size]
                truncated += _count_truncated(self.tokenizer, batch, self.context_length)
                input_ids = np.asarray(self.tokenizer(batch, context_length=self.context_length), dtype=np.int64)
                out[start:start + len(batch)] = self._finish(self._runtime.encode_tokens(input_ids))
                bar.update(len(batch))
        if truncated:
            logger.warning("%d text%s longer than %d tokens %s truncated", truncated,
                           "s" if truncated != 1 else "", self.context_length, "were" if truncated != 1 else "was")
        return out

    # --- images ---

    def encode_image(self, images: Sequence[ImageInput], *, batch_size: int | None = None,
                     progress: bool = False) -> np.ndarray:
        """Embed images (paths, encoded bytes or PIL images): float32 array [N, embed_dim] in the model's space.

        Raises ``ImageError`` naming the first item that cannot be read.
        """
        return self._encode_images(images, batch_size, progress, keep_going=False).embeddings

    def encode_image_batch(self, images: Sequence[ImageInput], *, batch_size: int | None = None,
                           progress: bool = False) -> BatchResult:
        """Embed every image that can be read; the others are listed in ``failures``."""
        return self._encode_images(images, batch_size, progress, keep_going=True)

    def _encode_images(self, images: Sequence[ImageInput], batch_size: int | None, progress: bool,
                       keep_going: bool) -> BatchResult:
        items = list(images)
        batch_size = batch_size or self.batch_size
        chunks: list[np.ndarray] = []
        indices: list[int] = []
        failures: list[ImageFailure] = []
        with ThreadPoolExecutor(self._num_workers) as pool, \
                tqdm(total=len(items), unit="image", disable=not progress) as bar:
            for start in range(0, len(items), batch_size):
                positions = range(start, min(start + batch_size, len(items)))
                prepared = list(pool.map(lambda i: self._prepare_image(items[i], i), positions))
                pixels = []
                for position, result in zip(positions, prepared):
                    if isinstance(result, ImageError):
                        if not keep_going:
                            raise result
                        failures.append(ImageFailure(position, result.item, result.reason))
                    else:
                        pixels.append(result)
                        indices.append(position)
                if pixels:
                    chunks.append(self._finish(self._runtime.encode_pixels(np.stack(pixels))))
                bar.update(len(positions))
        embeddings = np.concatenate(chunks) if chunks else np.empty((0, self.embed_dim), dtype=np.float32)
        return BatchResult(embeddings, indices, failures)

    def _prepare_image(self, item: ImageInput, index: int) -> np.ndarray | ImageError:
        label = describe_item(item, index)
        try:
            image = load_image(item, max_pixels=self.max_pixels, label=label)
        except ImageError as error:
            return error
        try:
            return preprocess_image(image, self.image_cfg)
        except ValueError as error:  # e.g. a 1x5000 strip that resizes to zero width
            return ImageError(label, f"cannot preprocess {image.width}x{image.height} image ({error})")

    def __repr__(self) -> str:
        return (f"Encoder(backend={self.backend!r}, precision={self.precision!r}, device={self.device!r}, "
                f"embed_dim={self.embed_dim}, "
                f"space={self.space.kind!r})")


def fastest_backend(path: str | os.PathLike, device: str = "auto") -> str:
    """The backend of :func:`fastest_variant`."""
    return fastest_variant(path, device)[0]


def fastest_variant(path: str | os.PathLike, device: str = "auto", precision: str | None = None
                    ) -> tuple[str, str | None]:
    """(backend, precision) to load ``path`` with: ``torch`` for model folders and sources; for an
    export folder, ``tensorrt`` when it has engines on a GPU host with TensorRT, ``onnx`` on any other
    GPU host; on the CPU, the variant of ``precision`` (any, when None) with the most images + texts
    per second in the manifest's ``speed`` record (measured at export time, see
    ``safeclip_sdk.export.openvino``) among those whose runtime is installed, else ``onnx``."""
    import importlib.util

    folder = Path(path)
    if not (folder / MANIFEST_NAME).is_file():
        return "torch", None
    try:
        manifest = load_manifest(folder, verify_hashes=False)
    except ExportError:
        return "onnx", precision  # loading it names what is wrong
    if device != "cpu" and _gpu_present():
        if manifest.tensorrt and importlib.util.find_spec("tensorrt") is not None:
            return "tensorrt", precision
        return "onnx", precision
    present = {f"onnx/{name}" for name in manifest.variants}
    present |= {f"openvino/{name}" for name in (manifest.openvino or {}).get("variants", {})}
    installed = {backend for backend, module in (("onnx", "onnxruntime"), ("openvino", "openvino"))
                 if importlib.util.find_spec(module) is not None}
    measured = {key: rates for key, rates in ((manifest.speed or {}).get("items_per_s") or {}).items()
                if key in present and key.split("/")[0] in installed
                and (precision is None or key.split("/")[1] == precision)}
    if not measured:
        return "onnx", precision
    # the time to embed one image and one text, at the measured batch size
    fastest = min(measured, key=lambda key: 1 / measured[key]["image"] + 1 / measured[key]["text"])
    backend, variant = fastest.split("/")
    return backend, variant


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """float32 rows of norm 1 (reduced-precision runtimes drift slightly off the sphere)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, np.float32(1e-12))


# --- tokenizers ---

def _tokenizer_from_spec(spec: str, context_length: int, kwargs: dict[str, Any]):
    """open_clip's tokenizer named in an export manifest: ``open_clip:simple`` or ``hf:<name>``."""
    open_clip = open_clip_module()
    if spec == "open_clip:simple":
        return open_clip.SimpleTokenizer(context_length=context_length)
    if spec.startswith("hf:"):
        return open_clip.tokenizer.HFTokenizer(spec.removeprefix("hf:"), context_length=context_length, **kwargs)
    raise ModelLoadError(f"unknown tokenizer '{spec}' in the export manifest (expected open_clip:simple or hf:<name>)")


def _count_truncated(tokenizer, texts: list[str], context_length: int) -> int:
    """How many texts open_clip's tokenizer will cut to fit ``context_length`` tokens."""
    if isinstance(tokenizer, open_clip_module().tokenizer.HFTokenizer):
        encoded = tokenizer.tokenizer([tokenizer.clean_fn(text) for text in texts])["input_ids"]
        return sum(len(ids) > context_length for ids in encoded)
    # SimpleTokenizer adds start and end tokens around the BPE tokens (its cache makes this cheap)
    return sum(len(tokenizer.encode(text)) + 2 > context_length for text in texts)


# --- runtimes ---

class _TorchRuntime:
    def __init__(self, source, device: str, precision: str):
        import torch

        self.device = str(resolve_device(device))
        if precision == "int8":
            raise ModelLoadError("backend 'torch' runs fp32 or fp16; int8 needs an ONNX export (backend 'onnx')")
        if precision == "fp16" and not self.device.startswith("cuda"):
            raise ModelLoadError(f"precision fp16 with backend 'torch' needs a CUDA device (got '{self.device}')")
        self.loaded = load_checked_model(os.fspath(source), device=self.device)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = self.loaded.model.to(self.dtype).eval()
        self.inference = model_inference(self.loaded)
        self.space = self.inference.space
        local = Path(os.fspath(source).removeprefix("local-dir:")).expanduser()
        self.category_classifier = load_folder_classifier(local, self.loaded.metadata) if local.is_dir() else None

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = torch.from_numpy(pixels).to(self.device, self.dtype)
            return self.space.embed(self.model.encode_image(batch), "image").float().cpu().numpy()

    def encode_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = torch.from_numpy(input_ids).to(self.device)
            return self.space.embed(self.model.encode_text(batch), "text").float().cpu().numpy()


def _gpu_present() -> bool:
    import torch

    return torch.cuda.is_available()


def _onnx_providers(device: str, available: list[str]) -> list[str | tuple[str, dict[str, int]]]:
    """TensorRT, then CUDA, then CPU: GPU providers only when installed AND a GPU is present."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    gpu_providers = [name for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if name in available]
    usable = gpu_providers if gpu_providers and _gpu_present() else []
    if device != "auto" and not usable:
        raise ModelLoadError(f"device '{device}' requested but onnxruntime has no usable GPU provider "
                             f"(available: {', '.join(available)}; install onnxruntime-gpu on a machine with a GPU)")
    device_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    return [(name, {"device_id": device_id}) for name in usable] + ["CPUExecutionProvider"]


class _OnnxRuntime:
    def __init__(self, folder: Path, manifest, precision: str, device: str, providers: list | None,
                 num_threads: int | None):
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ModelLoadError("backend 'onnx' needs onnxruntime: pip install 'safeclip[onnx]' "
                                 "(or 'safeclip[gpu]' for onnxruntime-gpu)") from error
        if precision not in manifest.variants:
            raise ModelLoadError(f"{folder}: no {precision} variant in the export "
                                 f"(available: {', '.join(manifest.variants)})")
        variant = manifest.variants[precision]
        chosen = providers or _onnx_providers(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if num_threads:
            options.intra_op_num_threads = num_threads
        for name, value in variant.get("session_options", {}).items():  # what the variant's graphs need
            if name == "graph_optimization_level":
                value = getattr(ort.GraphOptimizationLevel, value)
            setattr(options, name, value)
        self.image = _OnnxSession(ort, folder / variant["image_encoder"]["file"], options, chosen,
                                  manifest.image["input"], manifest.image["output"])
        self.text = _OnnxSession(ort, folder / variant["text_encoder"]["file"], options, chosen,
                                 manifest.text["input"], manifest.text["output"])
        self.providers = self.image.session.get_providers()
        self.device = "cpu" if self.providers == ["CPUExecutionProvider"] else "cuda"

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.image.run(pixels)

    def encode_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        return self.text.run(input_ids)


class _OnnxSession:
    _NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                    "tensor(int64)": np.int64, "tensor(int32)": np.int32}

    def __init__(self, ort, path: Path, options, providers: list, input_name: str, output_name: str):
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(f"{path}: onnxruntime cannot load it ({str(error).splitlines()[0]})") from error
        inputs = {node.name: node.type for node in self.session.get_inputs()}
        if input_name not in inputs:
            raise ModelLoadError(f"{path}: no input named '{input_name}' (found {', '.join(inputs)})")
        self.input_name, self.output_name = input_name, output_name
        self.input_type = self._NUMPY_TYPES.get(inputs[input_name], np.float32)

    def run(self, array: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(array, dtype=self.input_type)}
        return self.session.run([self.output_name], feed)[0]


class _TensorRTRuntime:
    def __init__(self, folder: Path, manifest, device: str, precision: str):
        engines = manifest.tensorrt
        if not engines:
            raise ModelLoadError(f"{folder}: the export has no TensorRT engines (export again with TensorRT enabled)")
        built_for = engines.get("precision", "fp32")
        if precision not in ("fp32", built_for):  # fp32 is the default: run the engines as built
            raise ModelLoadError(f"{folder}: the TensorRT engines were built for {built_for}, not {precision}")
        try:
            import tensorrt as trt
        except ImportError as error:
            raise ModelLoadError("backend 'tensorrt' needs NVIDIA TensorRT's Python package "
                                 "(pip install tensorrt, on a machine with an NVIDIA GPU and CUDA)") from error
        self.device = str(resolve_device("cuda" if device == "auto" else device))
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        self.image = _TensorRTEngine(trt, runtime, folder / engines["image_encoder"]["file"],
                                     manifest.image["input"], manifest.image["output"], self.device)
        self.text = _TensorRTEngine(trt, runtime, folder / engines["text_encoder"]["file"],
                                    manifest.text["input"], manifest.text["output"], self.device)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.image.run(pixels)

    def encode_tokens(self, input_ids: np.ndarray) -> np.ndarray:
        return self.text.run(input_ids)


class _TensorRTEngine:
    """One serialized engine run with the TensorRT 10 tensor API; torch CUDA tensors hold the buffers."""

    def __init__(self, trt, runtime, path: Path, input_name: str, output_name: str, device: str):
        import torch

        self.device = device
        with torch.cuda.device(device):
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelLoadError(f"{path}: TensorRT cannot deserialize the engine "
                                 f"(built with another TensorRT version or for another GPU?)")
        self.context = self.engine.create_execution_context()
        self.input_name, self.output_name = input_name, output_name
        self.input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(input_name))
        self.output_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(output_name))
        self.max_batch = int(self.engine.get_tensor_profile_shape(input_name, 0)[2][0])

    def run(self, array: np.ndarray) -> np.ndarray:
        import torch

        outputs = []
        stream = torch.cuda.current_stream(self.device)
        for start in range(0, len(array), self.max_batch):
            batch = torch.from_numpy(np.ascontiguousarray(array[start:start + self.max_batch]))
            batch = batch.to(self.device, self.input_dtype).contiguous()
            self.context.set_input_shape(self.input_name, tuple(batch.shape))
            output = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)),
                                 dtype=self.output_dtype, device=self.device)
            self.context.set_tensor_address(self.input_name, batch.data_ptr())
            self.context.set_tensor_address(self.output_name, output.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for a batch of {len(batch)}")
            stream.synchronize()
            outputs.append(output.float().cpu().numpy())
        return np.concatenate(outputs)


def _torch_dtype(trt, dtype):
    import torch

    mapping = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
               trt.int64: torch.int64, trt.bfloat16: torch.bfloat16}
    return mapping[dtype]
