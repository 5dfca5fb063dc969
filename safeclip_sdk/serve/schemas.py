"""Request bodies. Unknown fields are refused (a misspelt ``modality`` fails instead of embedding
with the wrong tower); ``input`` items are checked one by one so each error names its item."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TEXT = "text"
IMAGE = "image"
Modality = Literal["text", "image"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingRequest(_Body):
    """OpenAI's embeddings request, plus ``modality``: which tower embeds ``input`` (``image``:
    base64 data URLs, or paths under the server's image root)."""

    input: str | list[Any]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    modality: Modality = TEXT


class ModerationRequest(_Body):
    """OpenAI's moderation request: ``input`` a text, a list of texts, or a list of content parts
    (``{"type": "text", "text": ...}``, ``{"type": "image_url", "image_url": {"url": ...}}``)."""

    input: str | list[Any]
    model: str | None = None


class SearchRequest(_Body):
    """A safe search of the served collection, as ``safeclip search`` runs it."""

    input: str
    model: str | None = None
    modality: Modality = TEXT
    k: int = Field(10, ge=1, le=1000)
    mode: str | None = None
    vector: str | None = None
    max_score: float | Literal["threshold"] | None = None
    exclude_categories: list[str] = []
    traversal: bool = True
