"""What an operator sets when starting the service: batching, queue, deadlines and input limits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import SafeclipError

#: the environment variable holding the accepted API keys, comma-separated
API_KEYS_ENV = "SAFECLIP_API_KEYS"


@dataclass(frozen=True)
class ServeSettings:
    """The service's batching and limits.

    Attributes:
        max_batch_size: most inputs one model call embeds (1: every request on its own).
        max_wait_ms: how long the first request of a batch waits for others to join it (0: a batch
            is what queued while the model was busy; measured the faster default, docs/serving.md).
        max_queue: requests waiting per modality; one more is answered 429 with Retry-After.
        request_timeout_s: a request not answered by then gets 503 (its batch still runs).
        retry_after_s: the Retry-After a 429 carries.
        max_body_bytes: larger request bodies get 413.
        max_inputs: most inputs in one request (422 naming ``input``).
        max_text_chars: longest text accepted (413 naming ``input[i]``).
        max_image_pixels: largest image accepted, width times height (413 naming ``input[i]``).
        image_root: image inputs may also be paths under this folder (never outside it); None: data URLs only.
        image_urls: image inputs may also be http(s) URLs, fetched by the server (off by default: a
            server that fetches URLs can be pointed at hosts its clients cannot reach).
        image_url_hosts: with ``image_urls``, the only hosts fetched from (lower-case names; empty: any).
        max_image_bytes: largest image accepted from a URL, in bytes (413 naming ``input[i]``).
        image_url_timeout_s: longest a URL fetch may take in all (422 naming ``input[i]``).
        model_name: the name clients give as ``model``; default: the model folder's name.
    """

    max_batch_size: int = 32
    max_wait_ms: float = 0.0
    max_queue: int = 256
    request_timeout_s: float = 30.0
    retry_after_s: int = 1
    max_body_bytes: int = 16 * 2**20
    max_inputs: int = 256
    max_text_chars: int = 4096
    max_image_pixels: int = 4096 * 4096
    image_root: Path | None = None
    image_urls: bool = False
    image_url_hosts: tuple[str, ...] = ()
    max_image_bytes: int = 20 * 2**20
    image_url_timeout_s: float = 5.0
    model_name: str | None = None

    def __post_init__(self):
        for name in ("max_batch_size", "max_queue", "retry_after_s", "max_body_bytes", "max_inputs",
                     "max_text_chars", "max_image_pixels", "max_image_bytes"):
            if getattr(self, name) < 1:
                raise SafeclipError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise SafeclipError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")
        for name in ("request_timeout_s", "image_url_timeout_s"):
            if getattr(self, name) <= 0:
                raise SafeclipError(f"{name} must be positive, got {getattr(self, name)}")
        if self.image_url_hosts and not self.image_urls:
            raise SafeclipError("image_url_hosts is set but image_urls is off (--image-url-host needs --allow-image-urls)")
        object.__setattr__(self, "image_url_hosts", tuple(host.strip().lower() for host in self.image_url_hosts))
        if self.image_root is not None:
            root = Path(self.image_root).expanduser().resolve()
            if not root.is_dir():
                raise SafeclipError(f"image root {self.image_root} is not a folder")
            object.__setattr__(self, "image_root", root)
