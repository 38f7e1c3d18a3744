"""The gateway's bundle-signing key: made on first use, readable by its owner only, refused
when others may read it; what it signs verifies on the device side."""

import stat
from pathlib import Path

import pytest

from llmops_edge.errors import EdgeError
from llmops_edge.manifest import PublicKey, verify_bundle
from serving.edge.protocol import BundleFileObject, BundleManifest
from serving.edge.signing import BundleSigner
from serving.errors import ServingError


def _document(signer: BundleSigner) -> dict:
    manifest = BundleManifest(
        model="demo-onnx@edge",
        version="demo-onnx:3",
        artifact_digest="sha256:" + "a" * 64,
        files=[BundleFileObject(path="genai_config.json", sha256="b" * 64, size=10)],
        issued_at=1,
        expires_at=2,
        key_id=signer.fingerprint,
    ).model_dump(mode="json")
    return {"object": "edge.bundle", "manifest": manifest, "signature": signer.sign(manifest)}


def test_the_key_is_made_once_private_and_verifies_on_the_device(tmp_path: Path) -> None:
    path = tmp_path / "home" / "edge" / "signing_key.pem"
    signer = BundleSigner(path)
    document = _document(signer)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert BundleSigner(path).public_pem == signer.public_pem  # a replica shares it

    device_key = PublicKey.from_pem(signer.public_pem)
    assert device_key.fingerprint == signer.fingerprint
    assert verify_bundle(document, device_key).version == "demo-onnx:3"
    document["manifest"]["files"][0]["path"] = "../../etc/cron.d/x"
    with pytest.raises(EdgeError, match="signature does not verify"):
        verify_bundle(document, device_key)


def test_a_signed_manifest_must_still_stay_inside_the_bundle(tmp_path: Path) -> None:
    signer = BundleSigner(tmp_path / "key.pem")
    for path in ("../outside", "/etc/passwd", ".hidden", "a//b"):
        document = _document(signer)
        document["manifest"]["files"].append({"path": path, "sha256": "c" * 64, "size": 1})
        document["signature"] = signer.sign(document["manifest"])  # a leaked key signs anything
        with pytest.raises(EdgeError, match="outside the bundle folder"):
            verify_bundle(document, PublicKey.from_pem(signer.public_pem))


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    assert BundleSigner(path).fingerprint.startswith("sha256:")
    path.chmod(0o644)
    with pytest.raises(ServingError, match="readable by other users") as err:
        BundleSigner(path).sign({})
    assert str(tmp_path) not in err.value.message
