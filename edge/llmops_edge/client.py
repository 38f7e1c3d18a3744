"""The gateway over HTTP, with the standard library only. The device's API key goes in
`Authorization: Bearer ...`; redirects are refused, so that the key never follows one to
another host. Downloads stream to a file, hashed as they come, and stop at the size the
signed manifest gives."""

import hashlib
import http.client
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmops_edge.errors import EdgeError
from llmops_edge.manifest import BundleFile

_CHUNK = 1 << 20
TIMEOUT_S = 60.0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        raise EdgeError(
            f"the gateway answered {code} with a redirect to {newurl}; use that URL "
            "(redirects are not followed, so that the device's key stays with its gateway)"
        )


_OPENER = urllib.request.build_opener(_NoRedirects)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_gateway_url(url: str, *, allow_http: bool) -> str:
    """`url` without a trailing slash, if it is one a device may send its key to: https,
    or http to this machine, or http anywhere when the operator allows it."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EdgeError(f"the gateway URL {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not (allow_http or is_loopback(parts.hostname)):
        raise EdgeError(
            f"{url} is plain http to another machine, which would send the device's API key "
            "in the clear; use https, or pass --allow-http on a network you trust"
        )
    return url.rstrip("/")


def _refusal(err: urllib.error.HTTPError) -> str:
    """The message of an OpenAI error envelope, or the status line."""
    try:
        body = json.loads(err.read(64 * 1024) or b"{}")
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException):
        message = err.reason
    return f"{message} (HTTP {err.code})"


class GatewayClient:
    def __init__(self, url: str, api_key: str | None, timeout: float = TIMEOUT_S):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _request(self, path: str, body: Any = None) -> http.client.HTTPResponse:
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            return _OPENER.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            raise EdgeError(f"the gateway refused {path}: {_refusal(err)}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
            reason = getattr(err, "reason", err)
            raise EdgeError(f"cannot reach the gateway at {self.url}: {reason}") from None

    def get_json(self, path: str) -> Any:
        return self._json(path, None)

    def post_json(self, path: str, body: Any) -> Any:
        return self._json(path, body)

    def _json(self, path: str, body: Any) -> Any:
        try:
            with self._request(path, body) as response:
                return json.loads(response.read())
        except (ValueError, OSError, http.client.HTTPException) as err:
            raise EdgeError(
                f"the gateway's answer to {path} was cut off or not JSON: {err}"
            ) from None

    def download(
        self,
        path: str,
        target: Path,
        expected: BundleFile,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        """Write the file at `path` to `target`, refusing it (and removing `target`) unless
        it has exactly the expected size and sha256; `on_chunk(n)` after each n bytes."""
        digest, size = hashlib.sha256(), 0
        try:
            with self._request(path) as response, target.open("wb") as out:
                while chunk := response.read(min(_CHUNK, expected.size - size + 1)):
                    size += len(chunk)
                    if size > expected.size:
                        break
                    digest.update(chunk)
                    out.write(chunk)
                    if on_chunk is not None:
                        on_chunk(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            target.unlink(missing_ok=True)
            raise EdgeError(f"the download of {expected.path} was interrupted: {err!r}") from None
        if size == expected.size and digest.hexdigest() == expected.sha256:
            return
        target.unlink(missing_ok=True)
        if size < expected.size:
            raise EdgeError(
                f"the download of {expected.path} stopped after {size} of its {expected.size} "
                "bytes; nothing was changed (run sync again)"
            )
        raise EdgeError(
            f"the download of {expected.path} does not match the signed manifest ("
            + ("more bytes than signed" if size > expected.size else "its sha256 differs")
            + "); refusing it, nothing was changed"
        )
