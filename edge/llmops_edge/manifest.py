"""Signed bundle manifests, as the gateway sends them:

    {"object": "edge.bundle",
     "manifest": {"object": "edge.bundle_manifest", "model": "demo-onnx@edge",
                  "version": "demo-onnx:2", "artifact_digest": "sha256:...",
                  "files": [{"path": "model.onnx", "sha256": "<hex>", "size": 18244}, ...],
                  "issued_at": <ms since the epoch>, "expires_at": <ms>,
                  "key_id": "sha256:<hex>"},
     "signature": "<base64 Ed25519 signature of the manifest's canonical JSON>"}

The canonical JSON is the manifest with sorted keys, no spaces and ASCII escapes; it holds
strings and integers only, so both sides write the same bytes. Nothing in a manifest is
trusted before its signature verifies, and even then every path is checked to stay inside the
bundle folder."""

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from llmops_edge.errors import EdgeError

MANIFEST_OBJECT = "edge.bundle_manifest"
REQUIRED_FILE = "genai_config.json"  # what makes a folder an ONNX Runtime GenAI model
MAX_FILES = 1000
_SHA256 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}:[1-9][0-9]{0,8}")
_PATH_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class PublicKey:
    """The gateway's Ed25519 public key a device was enrolled with."""

    key: Ed25519PublicKey

    @classmethod
    def from_pem(cls, pem: str) -> "PublicKey":
        try:
            key = serialization.load_pem_public_key(pem.encode())
        except (ValueError, TypeError) as err:
            raise EdgeError(f"not a PEM public key: {err}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise EdgeError("the public key is not an Ed25519 key; bundles are signed with one")
        return cls(key)

    @property
    def pem(self) -> str:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    @property
    def fingerprint(self) -> str:
        """`sha256:<hex>` of the raw key, as `llm-serve edge public-key` prints it."""
        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class BundleFile:
    path: str  # POSIX path inside the bundle folder
    sha256: str  # hex
    size: int


@dataclass(frozen=True)
class Manifest:
    model: str
    version: str
    artifact_digest: str
    files: tuple[BundleFile, ...]
    issued_at: int
    expires_at: int
    key_id: str

    @property
    def folder_name(self) -> str:
        """The bundle's folder under `versions/`: its artifact digest's hex."""
        return self.artifact_digest.removeprefix("sha256:")


def _safe_path(path: Any) -> str:
    """`path` if it names a file inside the bundle folder: relative, no `..`, no hidden or
    odd names (a signed manifest is still checked; a leaked key must not write elsewhere)."""
    if not isinstance(path, str) or not path:
        raise EdgeError("the manifest names a file without a path")
    parts = PurePosixPath(path).parts
    if "/".join(parts) != path or not all(_PATH_PART.fullmatch(p) for p in parts):
        raise EdgeError(f"the manifest names a file outside the bundle folder: {path!r}")
    return path


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EdgeError(f"the bundle manifest has no valid {name!r}")
    return value


def _parse(data: dict[str, Any]) -> Manifest:
    if data.get("object") != MANIFEST_OBJECT:
        raise EdgeError("the gateway did not send a bundle manifest")
    version = _field(data, "version", str)
    digest = _field(data, "artifact_digest", str)
    if not _VERSION.fullmatch(version) or not _SHA256.fullmatch(digest.removeprefix("sha256:")):
        raise EdgeError("the bundle manifest's version or artifact digest is malformed")
    entries = _field(data, "files", list)
    if not 0 < len(entries) <= MAX_FILES:
        raise EdgeError(f"a bundle holds 1 to {MAX_FILES} files; this one lists {len(entries)}")
    files = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise EdgeError("the bundle manifest lists a file that is not an object")
        path = _safe_path(entry.get("path"))
        sha, size = entry.get("sha256"), entry.get("size")
        if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise EdgeError(f"the bundle manifest gives {path} no valid sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise EdgeError(f"the bundle manifest gives {path} no valid size")
        files.append(BundleFile(path, sha, size))
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise EdgeError("the bundle manifest lists a file twice")
    if REQUIRED_FILE not in paths:
        raise EdgeError(f"the bundle has no {REQUIRED_FILE}; it is not an ONNX Runtime GenAI model")
    issued_at, expires_at = _field(data, "issued_at", int), _field(data, "expires_at", int)
    if expires_at <= issued_at:
        raise EdgeError("the bundle manifest expires before it was issued")
    return Manifest(
        model=_field(data, "model", str),
        version=version,
        artifact_digest=digest,
        files=tuple(files),
        issued_at=issued_at,
        expires_at=expires_at,
        key_id=_field(data, "key_id", str),
    )


def verify_bundle(document: Any, public_key: PublicKey) -> Manifest:
    """The manifest of a signed bundle document, once its signature verifies against
    `public_key`; EdgeError otherwise."""
    if not isinstance(document, dict) or not isinstance(document.get("manifest"), dict):
        raise EdgeError("the gateway did not send a signed bundle")
    try:
        signature = base64.b64decode(str(document.get("signature", "")), validate=True)
    except (binascii.Error, ValueError):
        signature = b""
    try:
        public_key.key.verify(signature, canonical_json(document["manifest"]))
    except InvalidSignature:
        raise EdgeError(
            "the bundle's signature does not verify against the public key this device was "
            f"enrolled with ({public_key.fingerprint}); refusing it"
        ) from None
    return _parse(document["manifest"])
