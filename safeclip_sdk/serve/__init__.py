"""``safeclip serve``: a model (and a collection) as an HTTP service, on FastAPI and uvicorn.

``app.py`` holds the routes (OpenAI-shaped ``/v1/embeddings`` and ``/v1/moderations``,
``/v1/search``, ``/healthz``, ``/readyz``, ``/metrics``), ``service.py`` what they call,
``batching.py`` the dynamic batcher, ``limits.py`` and ``auth.py`` the bounds and API keys,
``metrics.py`` the Prometheus metrics, ``errors.py`` the JSON errors, ``server.py`` uvicorn.
Needs the ``serve`` extra (``pip install 'safeclip[serve]'``).
"""

from .app import create_app
from .server import serve
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve"]
