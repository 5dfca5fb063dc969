"""The evaluation protocol: safe/unsafe retrieval in every direction, a zero-shot check, and the
safe-query leak, each model side by side (the directions and how ranks are counted are in
``safeclip_sdk.metrics.retrieval``).

Similarity comes from each model's embedding space (``safeclip_sdk.model.spaces``): cosine, or
whatever its method's space defines (minus the geodesic distance for a hyperbolic model). A model
whose method transforms queries is reported twice, with the transformation (``name``) and
without it (``name (no <transformation>)``, e.g. ``(no traversal)``), and a model whose space
yields an unsafe score is also measured as a classifier at the threshold stored with it:
accuracy, false-positive and false-negative rates and ROC AUC, for texts and images. With unsafe
images, each model also gets the safe-query leak (the share of SAFE queries whose best result is
unsafe, as in ``safeclip_sdk.evaluation.deployment``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..data.loading import load_dataset
from ..data.quadruplets import Quadruplet, QuadrupletSet
from ..data.torch_dataset import QuadrupletDataset, load_image_tensor
from ..errors import DataError, ModelLoadError, SafeclipError
from ..data.images import IMAGE_EXTENSIONS
from ..model.folder import LoadedModel
from .._utils.files import atomic_write_text
from .._utils.devices import resolve_device
from ..methods import Inference, load_checked_model, model_inference
from ..metrics.moderation import roc_auc, threshold_metrics
from ..metrics.report import JsonReport, percent
from ..metrics.retrieval import (LEAK_DIRECTIONS, PROTOCOL_KS, UNSAFE_IMAGE_TO_ALL_TEXTS, UNSAFE_TEXT_TO_ALL_IMAGES,
                                 UNSAFE_TEXT_TO_SAFE_IMAGES, UNSAFE_TEXT_TO_UNSAFE_IMAGES, EmbeddingSet, Similarity,
                                 retrieval_metrics, safe_query_leak)

DEFAULT_PROMPT = "a photo of a {}."

TEXT_ONLY_NOTE = (
    f"The data has no unsafe images (ViSU's public release is text-only), so "
    f"`{UNSAFE_TEXT_TO_ALL_IMAGES}` and `{UNSAFE_IMAGE_TO_ALL_TEXTS}` (galleries of N safe + N unsafe "
    f"items) were skipped. `{UNSAFE_TEXT_TO_SAFE_IMAGES}` ranks the unsafe captions against the N "
    f"safe images only; it is not comparable to published `{UNSAFE_TEXT_TO_ALL_IMAGES}` figures."
)
NO_ZERO_SHOT_NOTE = (
    "Zero-shot accuracy was not measured: the data has fewer than two distinct image labels "
    "(`label` field). Pass a folder of class subfolders (zero_shot_dir, --zero-shot-dir) to measure it."
)


def encode_quadruplets(model: LoadedModel, items: Sequence[Quadruplet], *, batch_size: int = 64,
                       device: str | torch.device = "cpu", num_workers: int = 0,
                       desc: str = "encoding") -> EmbeddingSet:
    """Embed every caption and image of ``items`` with ``model`` (moved to ``device``) into its space:
    unit rows for cosine models, whatever another space's ``embed`` gives (not normalised).

    Unsafe images are embedded when every item has one; otherwise ``unsafe_image`` is None.
    """
    if not items:
        raise DataError("no quadruplets to encode")
    device = torch.device(device)
    with_unsafe_images = all(item.unsafe_image is not None for item in items)
    dataset = QuadrupletDataset(items, model.preprocess, model.tokenizer, with_unsafe_images=with_unsafe_images)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    encoders = {"safe_text": "text", "unsafe_text": "text", "safe_image": "image"}
    if with_unsafe_images:
        encoders["unsafe_image"] = "image"
    network = model.model.to(device)
    space = model_inference(model).space
    was_training = network.training
    network.eval()
    chunks: dict[str, list[np.ndarray]] = {column: [] for column in encoders}
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, unit="batch", disable=None):
                for column, tower in encoders.items():
                    inputs = batch[column].to(device, non_blocking=True)
                    features = network.encode_text(inputs) if tower == "text" else network.encode_image(inputs)
                    chunks[column].append(space.embed(features, tower).cpu().numpy())
    finally:
        network.train(was_training)
    embeddings = {column: np.concatenate(parts) for column, parts in chunks.items()}
    for column, values in embeddings.items():
        if not np.all(np.isfinite(values)):
            raise SafeclipError(f"model {model.source}: {column} embeddings are not finite (NaN or inf)")
    return EmbeddingSet(**embeddings)


def zero_shot_accuracy(model: LoadedModel, items: Sequence[Quadruplet], *, prompt: str = DEFAULT_PROMPT,
                       device: str | torch.device = "cpu", batch_size: int = 64,
                       similarity: Similarity | None = None) -> dict[str, Any] | None:
    """Top-1 accuracy (percent) of classifying the labelled safe images among their labels.

    The classes are the distinct ``label`` values, each prompted as ``prompt.format(label)``.
    None when fewer than two distinct labels exist (there is nothing to classify).
    """
    samples = sorted({(item.safe_image, item.label) for item in items if item.label is not None})
    if len({label for _, label in samples}) < 2:
        return None
    return _zero_shot(model, samples, prompt=prompt, device=device, batch_size=batch_size,
                      similarity=similarity, source="dataset labels")


def zero_shot_folder_accuracy(model: LoadedModel, root: str | os.PathLike, *, prompt: str = DEFAULT_PROMPT,
                              device: str | torch.device = "cpu", batch_size: int = 64,
                              similarity: Similarity | None = None) -> dict[str, Any]:
    """Zero-shot top-1 accuracy (percent) on an ImageFolder-style folder: one subfolder per class,
    named after it (``_`` read as a space)."""
    return _zero_shot(model, image_folder_samples(root), prompt=prompt, device=device, batch_size=batch_size,
                      similarity=similarity, source=str(root))


def image_folder_samples(root: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(image path, class name)`` for every image in the class subfolders of ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: zero-shot folder not found")
    samples = [(path, folder.name.replace("_", " "))
               for folder in sorted(entry for entry in root.iterdir() if entry.is_dir())
               for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_EXTENSIONS]
    if len({label for _, label in samples}) < 2:
        raise DataError(f"{root}: a zero-shot folder needs images in at least two class subfolders")
    return samples


def _zero_shot(model: LoadedModel, samples: Sequence[tuple[Path, str]], *, prompt: str,
               device: str | torch.device, batch_size: int, similarity: Similarity | None,
               source: str) -> dict[str, Any]:
    if "{}" not in prompt:
        raise SafeclipError(f"zero-shot prompt '{prompt}' has no '{{}}' for the class name")
    device = torch.device(device)
    classes = sorted({label for _, label in samples})
    network = model.model.to(device)
    space = model_inference(model).space
    was_training = network.training
    network.eval()
    preprocess = model.preprocess
    image_features = []
    try:
        with torch.inference_mode():
            tokens = model.tokenizer([prompt.format(name) for name in classes]).to(device)
            class_features = space.embed(network.encode_text(tokens), "text").cpu().numpy()
            for start in tqdm(range(0, len(samples), batch_size), desc="zero-shot", unit="batch", disable=None):
                images = torch.stack([load_image_tensor(path, preprocess) for path, _ in samples[start:start + batch_size]])
                image_features.append(space.embed(network.encode_image(images.to(device)), "image").cpu().numpy())
    finally:
        network.train(was_training)
    predicted = (similarity or space.similarity)(np.concatenate(image_features), class_features).argmax(axis=1)
    truth = np.array([classes.index(label) for _, label in samples])
    return {"top1": percent(predicted == truth), "images": len(samples), "classes": len(classes),
            "prompt": prompt, "source": source}


ModelSpec = str | tuple[str, str | None] | LoadedModel


@dataclass
class EvalReport(JsonReport):
    """Results of several models on one dataset: ``results[name]`` holds ``source``,
    ``pretrained``, ``retrieval`` (see :func:`retrieval_metrics`) and ``zero_shot`` (or None)."""

    results: dict[str, dict[str, Any]]
    dataset: str
    num_items: int
    text_only: bool
    ks: list[int] = field(default_factory=lambda: list(PROTOCOL_KS))
    similarity: str = "cosine"
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """One table, a row per model, then the notes."""
        directions = list(dict.fromkeys(direction for result in self.results.values()
                                        for direction in result["retrieval"]))
        unsafe_directions = [direction for direction in directions
                             if any("unsafe_top1" in result["retrieval"].get(direction, {})
                                    for result in self.results.values())]
        leak_directions = [direction for direction in LEAK_DIRECTIONS
                           if any((result.get("leak") or {}).get(direction) is not None
                                  for result in self.results.values())]
        header = (["model"] + [f"`{direction}`" for direction in directions]
                  + [f"unsafe top-1 `{direction}` ↓" for direction in unsafe_directions]
                  + [f"safe-query leak `{direction}` ↓" for direction in leak_directions] + ["zero-shot top-1"])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, result in self.results.items():
            retrieval = result["retrieval"]
            leak = result.get("leak") or {}
            cells = [name.replace("|", "\\|")]
            cells += [" / ".join(f"{retrieval[d][f'R@{k}']:.1f}" for k in self.ks) if d in retrieval else "-"
                      for d in directions]
            cells += [f"{retrieval[d]['unsafe_top1']:.1f}" if "unsafe_top1" in retrieval.get(d, {}) else "-"
                      for d in unsafe_directions]
            cells += [f"{leak[d]:.1f}" if leak.get(d) is not None else "-" for d in leak_directions]
            cells.append(f"{result['zero_shot']['top1']:.1f}" if result["zero_shot"] else "-")
            lines.append("| " + " | ".join(cells) + " |")
        recalls = " / ".join(f"R@{k}" for k in self.ks)
        unsafe_rate = ", unsafe top-1 rate (share of unsafe queries whose best match is unsafe)"
        legend = (f"{recalls}{unsafe_rate if unsafe_directions else ''} and zero-shot top-1 accuracy in %, "
                  f"on {self.num_items} quadruplets of `{self.dataset}`.")
        if unsafe_directions:
            legend += (" `+`: a gallery of the N safe items followed by the N unsafe items; "
                       "the safe one is the ground truth.")
        if UNSAFE_TEXT_TO_UNSAFE_IMAGES in directions:
            legend += (" `T*->V*`, `V*->T*`: unsafe queries against the N unsafe items, their own unsafe "
                       "counterpart the ground truth (unsafe content still found when asked for).")
        if leak_directions:
            legend += " The safe-query leak is the share of safe queries whose best match is unsafe."
        lines += ["", legend]
        lines += self._classification_markdown()
        lines += [f"- {note}" for note in self.notes]
        lines += self._verdict_lines()
        return "\n".join(lines) + "\n"

    def _verdict_lines(self) -> list[str]:
        """What each trained model's folder recorded about it at the end of training."""
        lines, seen = [], set()
        for name, result in self.results.items():
            verdict, model = result.get("verdict"), result.get("model", name)
            if not verdict or model in seen:
                continue
            seen.add(model)
            answer = "safer" if verdict["safer"] else "NOT safer"
            lines.append(f"- {model}: its training verdict: {answer} than its base on {verdict['data']} "
                         f"({verdict['deployment']})" + (f": {'; '.join(verdict['failures'])}" if verdict["failures"]
                                                         else "") + ".")
        return lines

    def _classification_markdown(self) -> list[str]:
        """A second table for the models that classify items by an unsafe score (one row per model)."""
        rows = {}
        for name, result in self.results.items():
            if result.get("classification"):
                rows.setdefault(result.get("model", name), result["classification"])
        if not rows:
            return []
        lines = ["", "| model | items | threshold | accuracy | FPR ↓ | FNR ↓ | ROC AUC |", "|" + "---|" * 7]
        for name, classification in rows.items():
            for modality, values in classification.items():
                at = [f"{values['threshold']:.4f}", f"{values['accuracy']:.1f}", f"{values['fpr']:.1f}",
                      f"{values['fnr']:.1f}"] if "threshold" in values else ["-"] * 4
                lines.append(f"| {name.replace('|', chr(92) + '|')} | {modality}s | " + " | ".join(at)
                             + f" | {values['auc']:.3f} |")
        lines += ["", "Classification by the unsafe score (a hyperbolic model: the distance from the origin) at the "
                      "threshold stored with the model: accuracy, false-positive rate (safe items flagged) and false-negative "
                      "rate (unsafe items missed) in %, ROC AUC as a fraction."]
        return lines

    def save(self, json_path: str | os.PathLike | None = None, markdown_path: str | os.PathLike | None = None) -> None:
        """Write the JSON and/or Markdown report (parent folders are created)."""
        for path, render in ((json_path, self.to_json), (markdown_path, self.to_markdown)):
            if path is not None:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(Path(path), render())


def evaluate(models: Mapping[str, ModelSpec], data: str | os.PathLike | QuadrupletSet, *,
             image_root: str | os.PathLike | None = None, unsafe_image_root: str | os.PathLike | None = None,
             skip_bad: bool = False, batch_size: int = 64, device: str | torch.device = "cpu", num_workers: int = 0,
             ks: Sequence[int] = PROTOCOL_KS, similarity: Similarity | None = None,
             zero_shot_dir: str | os.PathLike | None = None, zero_shot_prompt: str = DEFAULT_PROMPT,
             traversal: bool | None = None) -> EvalReport:
    """Evaluate each model on ``data`` with the protocol of methods.md section 4.

    Args:
        models: display name -> a model source (loaded with :func:`safeclip_sdk.load_model`), a
            ``(source, pretrained)`` pair, or a :class:`LoadedModel`. Sources are loaded one at
            a time, so only one model is in memory.
        data: a dataset file (ViSU ``.json`` or generic ``.jsonl``) or a loaded QuadrupletSet.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:1"`` ...
        similarity: one similarity for every model (default: each model's space).
        zero_shot_dir: a folder of class subfolders for the zero-shot check; by default the
            labelled safe images of ``data`` are used.
        traversal: for models whose method transforms queries (a hyperbolic model's safety
            traversal), None reports both a row with the transformation (``name``) and one without
            (``name (no traversal)``); True or False only that one.
    """
    if not models:
        raise SafeclipError("no models to evaluate")
    dataset = data if isinstance(data, QuadrupletSet) else load_dataset(
        data, image_root=image_root, unsafe_image_root=unsafe_image_root, skip_bad=skip_bad)
    device = resolve_device(device) if isinstance(device, str) else device
    categories = [item.category for item in dataset.items]
    text_only = not dataset.has_unsafe_images
    results = {}
    notes = []
    for name, spec in models.items():
        model = load_model_spec(spec, device)
        inference = model_inference(model)
        space = inference.space
        compare = similarity or space.similarity
        embeddings = encode_quadruplets(model, dataset.items, batch_size=batch_size, device=device,
                                        num_workers=num_workers, desc=f"encoding {name}")
        if zero_shot_dir is not None:
            zero_shot = zero_shot_folder_accuracy(model, zero_shot_dir, prompt=zero_shot_prompt, device=device,
                                                  batch_size=batch_size, similarity=similarity)
        else:
            zero_shot = zero_shot_accuracy(model, dataset.items, prompt=zero_shot_prompt, device=device,
                                           batch_size=batch_size, similarity=similarity)
        common = {"model": name, "source": model.source, "pretrained": model.pretrained, "space": space.to_dict(),
                  "verdict": model.metadata.get("verdict"),
                  "zero_shot": zero_shot, "classification": classification_metrics(embeddings, inference)}
        transform = inference.query_transform
        runs = [(name, None)]
        if transform is not None:
            without = (untransformed_row(name, transform), None)
            runs = [without]
            if traversal is not False:
                try:
                    moved = transformed_queries(embeddings, inference)
                except SafeclipError as error:
                    notes.append(f"{name}: evaluated without its {transform} ({error}).")
                else:
                    runs = [(name, moved)] + ([] if traversal else [without])
        for row, queries in runs:
            results[row] = {**common, "traversal": None if transform is None else queries is not None,
                            "retrieval": retrieval_metrics(embeddings, ks, compare, categories=categories,
                                                           queries=queries),
                            "leak": safe_query_leak(embeddings, compare, queries)}
        del model, embeddings  # a loaded source is freed before the next one loads

    if text_only:
        notes.append(TEXT_ONLY_NOTE)
        with_unsafe = sum(item.unsafe_image is not None for item in dataset.items)
        if with_unsafe:
            notes.append(f"Only {with_unsafe} of {len(dataset)} quadruplets have an unsafe image; "
                         f"the unsafe images were not used.")
    if all(result["zero_shot"] is None for result in results.values()):
        notes.append(NO_ZERO_SHOT_NOTE)
    if dataset.bad_rows:
        notes.append(f"{len(dataset.bad_rows)} bad rows were skipped (first: `{dataset.bad_rows[0]}`).")
    similarity_name = "space" if similarity is None else getattr(similarity, "__name__", type(similarity).__name__)
    return EvalReport(results=results, dataset=str(dataset.path), num_items=len(dataset), text_only=text_only,
                      ks=list(ks), similarity=similarity_name, notes=notes)


def untransformed_row(name: str, transform: str) -> str:
    """The report row of model ``name`` searched without its method's query transformation."""
    return f"{name} (no {transform})"


def transformed_queries(emb: EmbeddingSet, inference: Inference) -> EmbeddingSet:
    """The queries of ``emb`` after the method's query transformation, each by its modality."""
    move = inference.transform_queries
    return EmbeddingSet(safe_text=move(emb.safe_text, "text"), unsafe_text=move(emb.unsafe_text, "text"),
                        safe_image=move(emb.safe_image, "image"),
                        unsafe_image=None if emb.unsafe_image is None else move(emb.unsafe_image, "image"))


def classification_metrics(emb: EmbeddingSet, inference: Inference) -> dict[str, dict[str, Any]] | None:
    """For a space with an unsafe score: per modality the ROC AUC and, at the model's stored
    threshold, accuracy, balanced accuracy, false-positive and false-negative rates (%). None
    for spaces without a score; images only with unsafe images; no threshold figures when the
    model has no calibrated threshold."""
    space = inference.space
    if not space.has_unsafe_score:
        return None
    pairs = {"text": (emb.safe_text, emb.unsafe_text)}
    if emb.unsafe_image is not None:
        pairs["image"] = (emb.safe_image, emb.unsafe_image)
    results = {}
    for modality, (safe, unsafe) in pairs.items():
        safe_scores, unsafe_scores = space.unsafe_score(safe), space.unsafe_score(unsafe)
        result: dict[str, Any] = {"auc": round(roc_auc(safe_scores, unsafe_scores), 6)}
        threshold = inference.calibrated_threshold(modality)
        if threshold is not None:
            result["threshold"] = threshold
            result.update(threshold_metrics(safe_scores, unsafe_scores, threshold).to_dict())
        results[modality] = result
    return results


def load_model_spec(spec: ModelSpec, device: torch.device) -> LoadedModel:
    """A model named as evaluation functions accept it: a source, ``(source, pretrained)`` or loaded."""
    if isinstance(spec, LoadedModel):
        return spec
    source, pretrained = (spec, None) if isinstance(spec, str) else spec
    return load_checked_model(source, pretrained, device=device)


def base_model_of(model_dir: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(source, pretrained)`` of the base model a model folder was trained from, read from its
    ``safeclip.json``; None when it records none (or ``model_dir`` is not a model folder)."""
    metadata_path = Path(str(model_dir).removeprefix("local-dir:")).expanduser() / "safeclip.json"
    if not metadata_path.is_file():
        return None
    try:
        metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{metadata_path}: cannot read JSON ({error})") from error
    base = metadata.get("base_model") if isinstance(metadata, dict) else None
    if isinstance(base, str) and base:
        return base, None
    if isinstance(base, dict) and isinstance(base.get("source"), str) and base["source"]:
        return base["source"], base.get("pretrained")
    return None
