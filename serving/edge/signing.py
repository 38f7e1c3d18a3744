"""The gateway's Ed25519 key that signs edge bundle manifests. It is generated on first use
(a PEM file readable by its owner only, under LLMOPS_HOME/edge unless the settings name
another), and refused when other users may read it. Devices are enrolled with its public
key (`llm-serve edge public-key`) and accept only manifests it signed."""

import base64
import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import ErrorCode
from serving.errors import ServingError

log = logging.getLogger(__name__)


def canonical_json(value: Any) -> bytes:
    """The bytes that are signed: sorted keys, no spaces, ASCII escapes (as `llm-edge`
    writes them again to verify)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _unusable(why: str) -> ServingError:
    # The path stays in the server log; clients see what to do.
    return ServingError(
        ErrorCode.INTERNAL,
        f"the gateway's edge signing key is unusable ({why}); an operator must fix it",
        api_code="signing_key_unusable",
    )


def _load(path: Path) -> Ed25519PrivateKey:
    if path.stat().st_mode & 0o077:
        log.error("the edge signing key %s is readable by other users; chmod 600 it", path)
        raise _unusable("its file is readable by other users")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        log.error("the edge signing key %s cannot be read: %s", path, err)
        raise _unusable("it is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise _unusable("it is not an Ed25519 key")
    return key


def _create(path: Path) -> None:
    """Write a new key to `path` unless one is there; a replica that wins the race keeps its
    key (the file appears whole, by a hard link, or not at all)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
        log.warning("generated the edge signing key %s; enroll devices with its public key", path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


class BundleSigner:
    def __init__(self, path: Path):
        self.path = path
        self._key: Ed25519PrivateKey | None = None
        self._lock = threading.Lock()

    @property
    def key(self) -> Ed25519PrivateKey:
        with self._lock:
            if self._key is None:
                if not self.path.exists():
                    _create(self.path)
                self._key = _load(self.path)
            return self._key

    @property
    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @property
    def fingerprint(self) -> str:
        """`sha256:<hex>` of the raw public key; devices print the same."""
        raw = self.key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def sign(self, payload: Any) -> str:
        """The base64 Ed25519 signature of `payload`'s canonical JSON."""
        return base64.b64encode(self.key.sign(canonical_json(payload))).decode()
