"""Signed Flower Apps. The coordinator signs the Flower App bundle (FAB) it starts with its
Ed25519 key; a silo launches a ClientApp only for a run whose FAB a key among the silo's
trusted entities signed (`silo_node`), so whoever reaches a SuperLink cannot run code next to
a silo's data.

Flower 1.32 verifies FAB signatures itself (`flower-supernode --trusted-entities`) only for
apps the SuperLink fetched from Flower Hub: a FAB uploaded by `flwr run` carries no
verification record, and such a SuperNode refuses every one. The stack therefore sends the
signature in the run config (`fab-signature`), over Flower's signed message (timestamp, then
the FAB's SHA-256), and checks it against a trusted-entities file in Flower's format:
`{key_id: "ssh-ed25519 AAAA... [comment]"}`."""

import base64
import hashlib
import time
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.primitives.asymmetric_ed25519 import (
    create_message_to_sign,
    decode_base64url,
    load_private_key,
    sign_message,
    verify_signature,
)

from finetune.errors import RecipeError

SIGNATURE_KEY = "fab-signature"  # the run-config key holding "<signed_at>.<base64url signature>"


def app_digest(app_dir: Path) -> bytes:
    """SHA-256 of the FAB that `flwr run app_dir` uploads (Flower builds it byte for byte
    the same each time)."""
    return hashlib.sha256(build_fab_from_disk(app_dir)).digest()


def load_signing_key(path: Path, param: str) -> ed25519.Ed25519PrivateKey:
    try:
        return load_private_key(Path(path).expanduser())
    except (OSError, ValueError) as err:
        raise RecipeError(
            f"{param}: {path} is not a readable Ed25519 private key in OpenSSH format ({err}); "
            "make one with `ssh-keygen -t ed25519 -N '' -f KEY`",
            param=param,
        ) from None


def sign_app(key: ed25519.Ed25519PrivateKey, app_dir: Path) -> str:
    """The run-config value that vouches for the FAB built from `app_dir`."""
    signed_at = int(time.time())
    signature = sign_message(key, create_message_to_sign(app_digest(app_dir), signed_at))
    return f"{signed_at}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def public_key_line(key: ed25519.Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def write_signing_key(folder: Path, key_id: str) -> tuple[Path, Path]:
    """A fresh Ed25519 key (OpenSSH format) and a trusted-entities file naming its public
    half, for a federation whose coordinator and silos share one machine."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = folder / "app-signing.key"
    private.touch(mode=0o600)
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    trusted = folder / "trusted-entities.yaml"
    trusted.write_text(yaml.safe_dump({key_id: public_key_line(key)}))
    return private, trusted


def load_trusted_entities(path: Path) -> dict[str, ed25519.Ed25519PublicKey]:
    """The Ed25519 public keys of a trusted-entities file; RecipeError says what is wrong."""
    param = "--trusted-entities"
    try:
        entries = yaml.safe_load(Path(path).expanduser().read_text())
    except (OSError, yaml.YAMLError) as err:
        raise RecipeError(f"{param}: cannot read {path}: {err}", param=param) from None
    if not isinstance(entries, dict) or not entries:
        raise RecipeError(
            f"{param}: {path} must map key ids to public keys, as "
            "`coordinator: ssh-ed25519 AAAA...`",
            param=param,
        )
    keys = {}
    for key_id, line in entries.items():
        try:
            key = serialization.load_ssh_public_key(str(line).encode())
        except ValueError:
            key = None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise RecipeError(
                f"{param}: entry {key_id!r} of {path} is not an ssh-ed25519 public key",
                param=param,
            )
        keys[str(key_id)] = key
    return keys


def refusal(
    fab_hash: str, signature: object, trusted: dict[str, ed25519.Ed25519PublicKey]
) -> str | None:
    """Why the FAB with SHA-256 `fab_hash` must not run here, or None when a trusted key
    signed it."""
    if not isinstance(signature, str) or not signature:
        return "the Flower App is not signed"
    signed_at, _, encoded = signature.partition(".")
    try:
        message = create_message_to_sign(bytes.fromhex(fab_hash), int(signed_at))
        raw = decode_base64url(encoded)
    except ValueError:
        return "the Flower App's signature is malformed"
    if any(verify_signature(key, message, raw) for key in trusted.values()):
        return None
    return "no trusted entity signed this Flower App"
