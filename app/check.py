"""``python -m app check TREE_OR_URL``: is a static DICOMweb tree or server fit for progressive loading?

Reports one line per finding, each naming its rule, and exits 1 when any defect (not a note) is
found, so CI can gate on it. Read-only: the codestream reader and the codecs are used as they are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from . import dicomjson as dj
from .transport import Transport, TransportError

__all__ = ["JsonProbe", "probe_json", "explain_missing_json"]


@dataclass(frozen=True)
class JsonProbe:
    """What one GET of a JSON document gave: ``cause`` is None when a usable document arrived."""

    url: str
    cause: str | None
    document: object = None


async def probe_json(transport: Transport, url: str, *, limit: int = dj.MAX_JSON_BYTES) -> JsonProbe:
    """GET ``url`` and say exactly why it is not a usable JSON document, if it is not.

    Names the HTTP status, a redirect (never followed), a transport failure (timeout, reset),
    a body over ``limit``, a gzip bomb, JSON nested too deeply, or text that is not JSON.
    """
    try:
        resp = await transport.get(url, headers={"Accept": "application/dicom+json, application/json"})
    except TransportError as exc:
        return JsonProbe(url, f"request failed: {exc}")
    body = bytearray()
    try:
        if 300 <= resp.status < 400:
            where = resp.headers.get("location", "?")
            return JsonProbe(url, f"redirected (HTTP {resp.status}) to {where}: redirects are not followed")
        if resp.status != 200:
            return JsonProbe(url, f"HTTP {resp.status}")
        async for chunk in resp.chunks():
            body += chunk
            if len(body) > limit:
                return JsonProbe(url, f"body larger than {limit} bytes")
    except TransportError as exc:
        return JsonProbe(url, f"body failed after {len(body)} bytes: {exc}")
    finally:
        await resp.aclose()
    try:
        document = dj.loads(body)
    except ValueError as exc:
        text = str(exc)
        if "inflates to more than" in text:
            return JsonProbe(url, f"gzip bomb: {text}")
        if "nested too deeply" in text:
            return JsonProbe(url, f"JSON nested too deeply ({len(body)} bytes)")
        return JsonProbe(url, f"not JSON: {text[:120]}")
    if not isinstance(document, list):
        return JsonProbe(url, f"not a DICOM JSON array (a JSON {type(document).__name__})")
    return JsonProbe(url, None, document)


async def explain_missing_json(transport: Transport, urls: Sequence[str]) -> str:
    """One line giving each candidate URL's cause, for 'no series metadata at ...' messages."""
    causes = []
    for url in urls:
        probe = await probe_json(transport, url)
        causes.append(f"{url.rsplit('/', 1)[-1]}: {probe.cause or 'usable'}")
    return "; ".join(causes)


def _dump(obj: object) -> str:
    return json.dumps(obj, sort_keys=True)
