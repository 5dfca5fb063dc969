"""Image inputs given as http(s) URLs, fetched only when the operator allows it, within a byte
limit, a total time limit and (optionally) a list of hosts.

Only http and https are opened (no file:, ftp: or data: through a redirect), and errors name the
field, never the URL: a URL may carry a token in its query string.
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from .errors import ApiError
from .settings import ServeSettings

URL_SCHEMES = ("http://", "https://")
_CHUNK = 64 * 1024


def is_image_url(value: str) -> bool:
    return value.lower().startswith(URL_SCHEMES)


def fetch_image_url(url: str, field: str, settings: ServeSettings) -> bytes:
    """The bytes at ``url``: 422 when URLs are off, the host is not allowed, or the fetch fails or
    takes longer than ``image_url_timeout_s``; 413 over ``max_image_bytes``."""
    if not settings.image_urls:
        raise ApiError(422, f"{field}: image URLs are off on this server (give a data URL)", param=field)
    _check_host(url, field, settings)
    deadline = time.monotonic() + settings.image_url_timeout_s
    request = urllib.request.Request(url, headers={"User-Agent": "safeclip-serve", "Accept": "image/*"})
    try:
        with _opener(field, settings).open(request, timeout=settings.image_url_timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > settings.max_image_bytes:
                raise _too_large(field, settings)
            return _read_bounded(response, field, settings, deadline)
    except ApiError:
        raise
    except urllib.error.HTTPError as error:
        if 300 <= error.code < 400:  # urllib refused the redirect: another scheme, or a loop
            raise ApiError(422, f"{field}: the image URL redirects somewhere this server does not follow "
                                f"(a scheme other than http(s), or too many redirects)", param=field) from None
        raise ApiError(422, f"{field}: fetching the image URL failed with HTTP {error.code}", param=field) from None
    except (TimeoutError, socket.timeout):
        raise _too_slow(field, settings) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise _too_slow(field, settings) from None
        raise ApiError(422, f"{field}: the image URL could not be fetched ({type(reason).__name__})",
                       param=field) from None


def _check_host(url: str, field: str, settings: ServeSettings) -> None:
    if not is_image_url(url):
        raise ApiError(422, f"{field}: the image URL redirects to a scheme other than http(s)", param=field)
    host = (urlsplit(url).hostname or "").lower()
    if not host:
        raise ApiError(422, f"{field}: the image URL has no host", param=field)
    if settings.image_url_hosts and host not in settings.image_url_hosts:
        raise ApiError(403, f"{field}: the image URL's host is not one this server fetches from",
                       "permission_error", field)


def _read_bounded(response, field: str, settings: ServeSettings, deadline: float) -> bytes:
    chunks, received = [], 0
    while chunk := response.read(_CHUNK):
        received += len(chunk)
        if received > settings.max_image_bytes:
            raise _too_large(field, settings)
        if time.monotonic() > deadline:
            raise _too_slow(field, settings)
        chunks.append(chunk)
    if not received:
        raise ApiError(422, f"{field}: the image URL answered an empty body", param=field)
    return b"".join(chunks)


def _too_large(field: str, settings: ServeSettings) -> ApiError:
    return ApiError(413, f"{field}: the image at the URL is larger than {settings.max_image_bytes} bytes", param=field)


def _too_slow(field: str, settings: ServeSettings) -> ApiError:
    return ApiError(422, f"{field}: the image URL did not answer within {settings.image_url_timeout_s:g} s",
                    param=field)


def _opener(field: str, settings: ServeSettings) -> urllib.request.OpenerDirector:
    """An opener with the http(s) handlers alone, whose redirects pass the same host check."""

    class CheckedRedirect(urllib.request.HTTPRedirectHandler):
        max_redirections = 5

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            _check_host(newurl, field, settings)
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(), CheckedRedirect(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.HTTPDefaultErrorHandler()):
        opener.add_handler(handler)
    return opener
