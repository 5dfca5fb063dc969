"""HySAC as a registered method: the learnable geometry trained with the towers, and the
classification threshold, distance statistics and traversal boundary written at the end."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .. import register
from ..base import Method, TrainingRun
from ..safe_clip.method import embed_quadruplets
from . import lorentz as L
from ...metrics.calibration import calibrate
from .config import HySACConfig
from .inference import SETTINGS_KEY, HySACInference
from .losses import HySACHead
from .space import LORENTZ
from .traversal import class_distance_stats, safe_boundary

logger = logging.getLogger(__name__)


class HySACObjective:
    """HySAC's seven terms on the towers' raw projection outputs (not L2-normalised)."""

    def __init__(self, head: HySACHead):
        self.head = head

    def embed(self, encoder, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # the image tower always runs: every term pairs a text with an image (frozen if untrained)
        return embed_quadruplets(encoder, batch, train_image_tower=True)

    def fixed_features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {}

    def loss(self, features: dict[str, torch.Tensor]):
        return self.head(**features)


@register
class HySAC(Method):
    name = "hysac"
    section = "hysac"
    config_class = HySACConfig
    uses_frozen_reference = False
    inference_class = HySACInference
    metadata_keys = (SETTINGS_KEY,)
    space_kinds = (LORENTZ,)
    display_name = "HySAC"
    # measured on the demo world (docs/methods.md): 138 steps leave the image classifier at ROC AUC 0.87
    # and safe text recall 11 points down; 276 steps reach 0.92 and 4 points
    schedule_factor = 2
    title = "HySAC, Hyperbolic Safety-Aware CLIP (Poppi et al., CVPR 2025)"
    summary = ("Safe and unsafe content were placed in an entailment hierarchy of a hyperbolic (Lorentz) space: "
               "safe content near the origin, unsafe content further out. The distance from the origin "
               "classifies content as unsafe, and an unsafe query can be moved back along its geodesic towards "
               "the safe region (safety traversal) or searched as it is.")

    def prepare(self, run: TrainingRun) -> None:
        settings = self.method_config
        self.head = HySACHead(run.embed_dim, curv_init=settings.curv_init, learn_curv=settings.learn_curv,
                              logit_scale_init=settings.logit_scale_init, max_logit_scale=settings.max_logit_scale,
                              min_radius=settings.min_radius, aperture_scale=settings.aperture_scale,
                              radial_margin=settings.radial_margin,
                              weights=dict(settings.weights))

    def objective(self, run: TrainingRun) -> HySACObjective:
        return HySACObjective(self.head)

    def extra_modules(self) -> dict[str, torch.nn.Module]:
        return {"head": self.head}

    def after_step(self, trainer) -> None:
        self.head.clamp_()

    @torch.no_grad()
    def finish(self, run: TrainingRun, model: torch.nn.Module) -> dict[str, Any]:
        """The Lorentz space with the learned geometry, and the ``hysac`` block: threshold
        calibrated on the validation split (the training split when there is none), distance
        statistics per class and the default traversal boundary."""
        head, settings = self.head.eval(), self.method_config
        split = "val" if run.val_set is not None else "train"
        # fp32 points, as the model folder's Encoder embeds them; distances in fp64, as it scores them
        points = {name: value.double() for name, value in self._points(run, model, split).items()}
        curv = float(head.curv)
        distances = {name: L.distance_to_origin(value, curv).cpu().numpy() for name, value in points.items()}
        stats = class_distance_stats(points, curv)

        calibration_modality = {}
        for modality in ("text", "image"):
            if f"{modality}_unsafe" in distances:
                calibration_modality[modality] = calibrate(distances[f"{modality}_safe"],
                                                           distances[f"{modality}_unsafe"],
                                                           objective=settings.calibration_objective)
        modalities = list(calibration_modality)
        calibration = calibrate(np.concatenate([distances[f"{m}_safe"] for m in modalities]),
                                np.concatenate([distances[f"{m}_unsafe"] for m in modalities]),
                                objective=settings.calibration_objective)
        calibration["modalities"] = modalities
        traversal = settings.traversal
        boundary = safe_boundary(stats, traversal.target, traversal.statistic, traversal.margin)
        if split == "train":
            logger.warning("hysac: no validation split; the unsafe threshold is calibrated on the training data")
        self._write_calibration(run, {"calibration": calibration, "calibration_modality": calibration_modality})
        logger.info("hysac: curvature %.4f, threshold %.4f (AUC %.3f on %s), traversal boundary %.4f",
                    curv, calibration["threshold"], calibration["auc"], split, boundary)
        return {
            "embedding_space": {"kind": LORENTZ, "dim": run.embed_dim, "curvature": curv,
                                "text_scale": float(head.log_alpha_text.exp()),
                                "image_scale": float(head.log_alpha_image.exp())},
            SETTINGS_KEY: {
                "calibration": calibration,
                "calibration_modality": calibration_modality,
                "calibration_split": {"val": "validation", "train": "train"}[split],
                "calibrated_on": run.config.data.val if split == "val" else run.config.data.train,
                "distance_stats": {name: value.to_dict() for name, value in stats.items()},
                "traversal": {"boundary": boundary, "target": traversal.target, "statistic": traversal.statistic,
                              "margin": traversal.margin},
                "logit_scale": float(head.logit_scale),
                "head": head.config(),
            },
        }

    @classmethod
    def model_card_notes(cls, metadata: dict[str, Any]) -> list[str]:
        curvature = (metadata.get("embedding_space") or {}).get("curvature")
        return [f"The model embeds into a Lorentz (hyperbolic) space of curvature -{curvature}: "
                "`safeclip_sdk.Encoder` applies the projection; open_clip alone returns the raw projection "
                "outputs f, whose points are exp_map0(scale * f) with the scales in `safeclip.json`."]

    @staticmethod
    def _write_calibration(run: TrainingRun, report: dict[str, Any]) -> None:
        """The calibration curves beside the run: ``calibration.json`` and ``calibration.png``."""
        import json

        from ..._utils.calibration_plot import draw_calibration
        from ..._utils.files import atomic_write_text

        atomic_write_text(run.run_dir / "calibration.json", json.dumps(report, indent=2) + "\n")
        draw_calibration(report, run.run_dir / "calibration.png")

    def _points(self, run: TrainingRun, model: torch.nn.Module, split: str) -> dict[str, torch.Tensor]:
        """Every item of ``split`` through the merged towers and the head, by class."""
        from ...data import QuadrupletDataset
        from ...model.towers import encode_image, encode_text

        data = run.split(split)
        dataset = QuadrupletDataset(data.items, run.base.preprocess, run.base.tokenizer,
                                    with_unsafe_images=data.has_unsafe_images)
        batch_size = max(1, run.config.batch_size // run.config.grad_accum_steps)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                             num_workers=run.config.data.num_workers)
        model.eval()
        parts: dict[str, list[torch.Tensor]] = {}
        for batch in loader:
            for name, key, encode, embed in (("text_safe", "safe_text", encode_text, self.head.embed_text),
                                             ("text_unsafe", "unsafe_text", encode_text, self.head.embed_text),
                                             ("image_safe", "safe_image", encode_image, self.head.embed_image),
                                             ("image_unsafe", "unsafe_image", encode_image, self.head.embed_image)):
                if key in batch:
                    parts.setdefault(name, []).append(embed(encode(model, batch[key].to(run.device))).cpu())
        return {name: torch.cat(values) for name, values in parts.items()}
