"""A small client of `raygan serve`, standard library only (`raygan generate` calls it).

raygan generate --url http://127.0.0.1:8000 -n 3 --prefix "a man" --temperature 0.8 --seed 1
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from raygan.core.errors import RayganError

RESENDS = 2
"""How many times a request is sent again when the server closed its connection before a whole
response arrived (none, or a cut one). RFC 9110 9.2.2 allows it for an idempotent request, and
every raygan route is one: a seeded /generate returns the same samples, an unseeded one had
returned nothing. Behind HAProxy a replica's death is retried by HAProxy itself; this covers a
proxy that closes the connection itself (restarting, or dropping its connections on the way)."""
_CLOSED = (ConnectionResetError, BrokenPipeError, http.client.IncompleteRead)
# (http.client.RemoteDisconnected, no response at all, is a ConnectionResetError)


def _call(url: str, path: str, body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url.rstrip("/") + path, data=data, headers={"content-type": "application/json"}
    )
    tries = 1
    while True:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RayganError(f"{url}{path}: HTTP {exc.code}: {_reason(exc)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, _CLOSED):
                if tries <= RESENDS:
                    tries += 1
                    continue
                closed = f"closed before a whole response: {reason} ({tries} tries)"
                raise RayganError(f"{url}{path}: {closed}") from None
            if isinstance(reason, http.client.HTTPException):
                raise RayganError(f"{url}{path}: not an HTTP response: {reason!r}") from None
            raise RayganError(f"cannot reach {url}{path}: {reason}") from None


def _reason(exc: urllib.error.HTTPError) -> str:
    """A 422's failed fields as 'field: message; ...', else the body as the server sent it."""
    text = exc.read().decode(errors="replace")
    try:
        detail = json.loads(text)["detail"]
    except (ValueError, KeyError, TypeError):
        return text.strip()[:500] or exc.reason
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', [])[1:]) or 'body'}: {d.get('msg')}"
            for d in detail
        )
    return str(detail)


def generate(
    url: str,
    *,
    n: int = 1,
    max_tokens: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    prefix: str = "",
    seed: int | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """POST /generate; the response as a dict (samples, tokens, lengths, seed, unknown_words,
    model). A rejected field raises RayganError naming it."""
    body: dict[str, Any] = {"n": n, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    body.update(prefix=prefix)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if seed is not None:
        body["seed"] = seed
    return _call(url, "/generate", body, timeout)


def metadata(url: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """GET /metadata: the served checkpoint, its config, vocab size, metrics and limits."""
    return _call(url, "/metadata", None, timeout)
