"""One HTTP POST for the channels that speak HTTP (webhook, Alertmanager), on the
standard library so the channels add no dependency.

Transport failures (refused, reset, timed out) become ``DeliveryError(retry=True)``; any
answer from the server, whatever its status, is returned for the caller to judge with
``status_error``, whose error carries the server's ``Retry-After`` for the dispatcher.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message

from alerts.channels.base import DeliveryError
from ingest.retry import parse_retry_after

USER_AGENT = "stadtpuls-alerts"
_ERROR_TEXT_LIMIT = 300  # enough of a response body to say why, not enough to flood a log


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    retry_after_s: float | None  # from a Retry-After header, in seconds, if any
    text: str  # the start of the response body


def check_http_url(url: str, what: str) -> None:
    """urllib also opens file: and ftp: URLs; a channel must only ever POST over HTTP."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"{what} must be an http:// or https:// URL, not {url!r}")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # urllib turns a redirected POST into a GET without the body; a redirect is a
    # configuration error to report, not something to follow.
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: object,
        code: int,
        msg: str,
        headers: Message,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def build_opener(ca_file: str | None) -> urllib.request.OpenerDirector:
    context = ssl.create_default_context(cafile=ca_file)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirects())


def post(
    opener: urllib.request.OpenerDirector,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
) -> HttpAnswer:
    # The URL was checked to be http(s) when the settings were made.
    request = urllib.request.Request(  # noqa: S310
        url, data=body, method="POST", headers={"User-Agent": USER_AGENT, **headers}
    )
    try:
        with opener.open(request, timeout=timeout_s) as response:
            return HttpAnswer(response.status, None, _text(response.read(_ERROR_TEXT_LIMIT)))
    except urllib.error.HTTPError as exc:
        with exc:
            text = _text(exc.read(_ERROR_TEXT_LIMIT))
        return HttpAnswer(exc.code, parse_retry_after(exc.headers.get("Retry-After")), text)
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise DeliveryError(f"POST {url}: {exc.reason}", retry=False) from exc
        raise DeliveryError(f"POST {url}: {exc.reason}", retry=True) from exc
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, bad answers
        raise DeliveryError(f"POST {url}: {exc!r}", retry=True) from exc


def status_error(url: str, answer: HttpAnswer) -> DeliveryError | None:
    """None for a 2xx; otherwise the error, retryable for 408, 429 and 5xx, and then
    carrying the answer's ``Retry-After``."""
    if 200 <= answer.status < 300:
        return None
    retry = answer.status in (408, 429) or answer.status >= 500
    detail = f": {answer.text}" if answer.text else ""
    return DeliveryError(
        f"POST {url}: HTTP {answer.status}{detail}",
        retry=retry,
        retry_after=answer.retry_after_s if retry else None,
    )


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").strip()
