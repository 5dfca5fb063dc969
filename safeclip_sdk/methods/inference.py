"""The inference side of a method: what a trained model does after training.

A model folder's ``safeclip.json`` (or an export's ``manifest.json``) names the method that
trained the model and holds the method's own keys. :func:`safeclip_sdk.methods.inference_of`
reads them into an :class:`Inference`, and everything downstream asks it instead of testing for
a method's name:

- ``space``: the embedding space the encoders output (how vectors are compared and stored);
- ``classifies`` / :meth:`unsafe_scores` / :meth:`threshold`: an unsafe classifier, if the method
  has one (the Encoder's ``classify``, a reindex's per-point score, evaluation's classification table);
- :meth:`transform_queries`: a query transformation applied before search (named by
  ``query_transform``; evaluation reports a model with and without it);
- :meth:`export_metadata`: the keys an export manifest must carry for the same behaviour;
- :meth:`recalibrated`: the metadata after a new threshold was calibrated on the user's data.

This base class is a plain CLIP in its recorded space: no classifier, no query transformation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from ..errors import SafeclipError
from ..model.spaces import EmbeddingSpace

#: registered methods whose models classify (filled by ``safeclip_sdk.methods.register``), for messages
CLASSIFYING_METHODS: list[str] = []


class Inference:
    """How a model is used after training (this class: a plain CLIP in ``space``)."""

    query_transform: ClassVar[str | None] = None  # the name of the method's query transformation
    method_classifies: ClassVar[bool] = False     # whether the method's models carry an unsafe classifier

    def __init__(self, space: EmbeddingSpace, method: str | None = None):
        self.space = space
        self.method = method

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], space: EmbeddingSpace, method: str | None,
                      where: str) -> Inference:
        """Read the method's own keys of ``metadata``; ModelLoadError naming ``where`` and the key."""
        return cls(space, method)

    @property
    def classifies(self) -> bool:
        """Whether the model says safe or unsafe by itself (:meth:`unsafe_scores` against :meth:`threshold`)."""
        return False

    def unsafe_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """One unsafe score per embedding (larger = less safe)."""
        scores = self.space.unsafe_score(embeddings)
        if scores is None:
            raise self.no_classifier()
        return scores

    def calibrated_threshold(self, modality: str) -> float | None:
        """The calibrated threshold above which a ``text`` or ``image`` item is unsafe, or None."""
        return None

    def threshold(self, modality: str) -> float:
        """:meth:`calibrated_threshold`, or a one-line error saying why there is none."""
        raise self.no_classifier()

    def recalibrated(self, metadata: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
        """``metadata`` with the thresholds of a calibration ``report`` written into the method's keys."""
        raise self.no_classifier()

    def check_query_transform(self) -> None:
        """SafeclipError when the model has a ``query_transform`` that its settings cannot run."""

    def transform_queries(self, embeddings: np.ndarray, modality: str) -> np.ndarray:
        """Query embeddings of ``modality`` as the method searches with them (unchanged here)."""
        return embeddings

    def export_metadata(self) -> dict[str, Any]:
        """The method's keys an export manifest carries so that its runtime behaves the same."""
        return {}

    def no_classifier(self) -> SafeclipError:
        """The one-line error for asking this model to classify when it cannot."""
        return SafeclipError(f"the model embeds into the {self.space.kind} space and has no unsafe classifier: "
                             f"classification needs a model trained by a method that classifies "
                             f"(safeclip train --method {' or '.join(CLASSIFYING_METHODS)})")
