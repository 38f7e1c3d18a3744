"""`llm-edge sync` against a real gateway: a device follows an alias, takes only the files
that changed, refuses what does not verify (a tampered file, a tampered or replayed
manifest, a download cut short) without leaving its running bundle, rolls back, and shows
in the fleet."""

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from llmops_edge.cli import main as edge_main
from llmops_edge.device import Device
from llmops_edge.runner import EdgeModel, Sampling
from tests.edge.conftest import EdgeGateway, changed_config

pytestmark = pytest.mark.slow


def sync(device: Path, model: str, capsys: pytest.CaptureFixture) -> dict:
    capsys.readouterr()
    edge_main(["sync", "--dir", str(device), "--model", model, "--json"])
    return json.loads(capsys.readouterr().out)


def failed_sync(device: Path, model: str, capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        edge_main(["sync", "--dir", str(device), "--model", model])
    assert exit_.value.code == 2
    return capsys.readouterr().err


def running(device: Path) -> str:
    """The version the device's current bundle was installed from."""
    folder = (device / "current").resolve()
    return json.loads(folder.with_suffix(".json").read_text())["manifest"]["version"]


def leftovers(device: Path) -> list[str]:
    return [p.name for p in (device / "versions").iterdir() if p.name.startswith(".")]


def fleet(server: EdgeGateway) -> dict[str, dict]:
    reply = server.get("/v1/edge/devices", server.admin_key)
    assert reply.status_code == 200, reply.text
    return {d["id"]: d for d in reply.json()["data"]}


def test_a_device_installs_its_alias_bundle_and_it_answers(
    edge_gateway: EdgeGateway, onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    version = edge_gateway.publish("answer-onnx", onnx_dir)
    device, _ = edge_gateway.enroll("kiosk-1", "answer-onnx@edge", tmp_path)

    done = sync(device, "answer-onnx@edge", capsys)
    assert done["status"] == "installed" and done["version"] == version.ref
    assert done["bundle_digest"] == version.artifact_digest
    assert sorted(done["downloaded"]) == sorted(p.name for p in onnx_dir.iterdir())
    assert running(device) == version.ref
    assert sync(device, "answer-onnx@edge", capsys)["status"] == "up-to-date"

    model = EdgeModel(device)
    greedy = Sampling(max_tokens=12)
    question = [{"role": "user", "content": "What is 12 + 30?"}]
    assert model.answer(question, greedy) == EdgeModel(onnx_dir).answer(question, greedy) != ""
    capsys.readouterr()
    edge_main(["run", str(device), "What is 12 + 30?", "--max-tokens", "12"])
    assert capsys.readouterr().out == model.answer(question, greedy) + "\n"

    seen = fleet(edge_gateway)["kiosk-1"]
    assert seen["version"] == version.ref and seen["status"] == "up-to-date"
    assert seen["model"] == "answer-onnx@edge" and seen["last_seen_at"] is not None

    # a file of the running bundle damaged on the device: the next sync finds it and repairs it
    config = (device / "current").resolve() / "genai_config.json"
    damaged = config.read_bytes().replace(b"}", b" }", 1)
    config.unlink()
    config.write_bytes(damaged)
    repaired = sync(device, "answer-onnx@edge", capsys)
    assert repaired["status"] == "installed" and repaired["downloaded"] == ["genai_config.json"]
    assert running(device) == version.ref and Device.load(device).bundle("previous") is None
    assert config.read_bytes() == (onnx_dir / "genai_config.json").read_bytes()


def test_a_new_version_takes_only_the_changed_files_and_rolls_back(
    edge_gateway: EdgeGateway, onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = edge_gateway.publish("update-onnx", onnx_dir)
    device, _ = edge_gateway.enroll("kiosk-2", "update-onnx@edge", tmp_path)
    sync(device, "update-onnx@edge", capsys)
    second = edge_gateway.publish("update-onnx", changed_config(onnx_dir, tmp_path / "v2", 7))

    before = len(edge_gateway.wire.paths)
    done = sync(device, "update-onnx@edge", capsys)
    files = [p for p in edge_gateway.wire.paths[before:] if "/files/" in p]
    assert done["status"] == "installed" and done["version"] == second.ref
    assert done["downloaded"] == ["genai_config.json"] and len(files) == 1
    assert sorted(done["reused"]) == sorted(
        p.name for p in onnx_dir.iterdir() if p.name != "genai_config.json"
    )
    loaded = Device.load(device)
    new, old = loaded.bundle("current"), loaded.bundle("previous")
    assert new is not None and old is not None
    assert os.path.samefile(new / "model.onnx.data", old / "model.onnx.data")  # not copied
    assert json.loads((new / "genai_config.json").read_text())["search"]["top_k"] == 7
    assert fleet(edge_gateway)["kiosk-2"]["version"] == second.ref

    capsys.readouterr()
    edge_main(["rollback", "--dir", str(device)])
    assert f"rolled back from {second.ref} to {first.ref}" in capsys.readouterr().out
    assert running(device) == first.ref
    assert EdgeModel(device).answer([{"role": "user", "content": "Sort: dcba"}], Sampling(8))
    seen = fleet(edge_gateway)["kiosk-2"]
    assert seen["version"] == first.ref and seen["status"] == "rolled-back"


def test_a_tampered_or_interrupted_download_leaves_the_running_bundle(
    edge_gateway: EdgeGateway, onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = edge_gateway.publish("wire-onnx", onnx_dir)
    device, _ = edge_gateway.enroll("kiosk-3", "wire-onnx@edge", tmp_path)
    sync(device, "wire-onnx@edge", capsys)
    second = edge_gateway.publish("wire-onnx", changed_config(onnx_dir, tmp_path / "v2", 9))
    wire = edge_gateway.wire

    wire.tamper = ("/files/", lambda body: body.replace(b"9", b"8"))  # same length, other bytes
    error = failed_sync(device, "wire-onnx@edge", capsys)
    assert "genai_config.json does not match the signed manifest (its sha256 differs)" in error
    assert running(device) == first.ref and not leftovers(device)
    seen = fleet(edge_gateway)["kiosk-3"]
    assert seen["status"] == "failed" and "sha256 differs" in seen["detail"]
    assert seen["version"] == first.ref

    wire.cut = "/files/"
    error = failed_sync(device, "wire-onnx@edge", capsys)
    assert "the download of genai_config.json stopped after" in error
    assert running(device) == first.ref and not leftovers(device)

    # the gateway's stored copy damaged on its disk: it refuses to send it
    store = edge_gateway.gateway.registry.artifacts
    files = store.load_manifest(second.artifact_digest).files
    blob = store.blob_path(next(f.sha256 for f in files if f.path == "genai_config.json"))
    good = blob.read_bytes()
    blob.write_bytes(good.replace(b"9", b"8"))
    error = failed_sync(device, "wire-onnx@edge", capsys)
    assert "HTTP 500" in error and "does not match its digest" in error
    assert running(device) == first.ref and not leftovers(device)

    blob.write_bytes(good)
    assert sync(device, "wire-onnx@edge", capsys)["downloaded"] == ["genai_config.json"]
    assert running(device) == second.ref


def test_a_tampered_replayed_or_foreign_manifest_is_refused(
    edge_gateway: EdgeGateway, onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    first = edge_gateway.publish("signed-onnx", onnx_dir)
    device, key = edge_gateway.enroll("kiosk-4", "signed-onnx@edge", tmp_path)
    old = edge_gateway.get("/v1/edge/bundles/signed-onnx@edge", key).content
    sync(device, "signed-onnx@edge", capsys)
    second = edge_gateway.publish("signed-onnx", changed_config(onnx_dir, tmp_path / "v2", 5))
    wire = edge_gateway.wire

    def retarget(body: bytes) -> bytes:  # send everyone the files of another version
        document = json.loads(body)
        document["manifest"]["files"][0]["sha256"] = "0" * 64
        return json.dumps(document).encode()

    wire.tamper = ("/bundles/signed-onnx@edge", retarget)
    error = failed_sync(device, "signed-onnx@edge", capsys)
    assert "signature does not verify against the public key this device was enrolled" in error
    assert running(device) == first.ref

    sync(device, "signed-onnx@edge", capsys)
    assert running(device) == second.ref
    wire.tamper = ("/bundles/signed-onnx@edge", lambda _body: old)  # a replay of v1's manifest
    error = failed_sync(device, "signed-onnx@edge", capsys)
    assert "refusing a replayed, older manifest" in error
    assert running(device) == second.ref

    # a manifest the gateway signed long ago, replayed to a device that never saw a newer one
    expired = json.loads(edge_gateway.get("/v1/edge/bundles/signed-onnx@edge", key).content)
    day = 86_400_000
    expired["manifest"]["issued_at"] -= 2 * day
    expired["manifest"]["expires_at"] -= 2 * day
    expired["signature"] = edge_gateway.gateway.edge.signer.sign(expired["manifest"])
    fresh, _ = edge_gateway.enroll("kiosk-5", "signed-onnx@edge", tmp_path / "fresh")
    wire.tamper = ("/bundles/signed-onnx@edge", lambda _body: json.dumps(expired).encode())
    error = failed_sync(fresh, "signed-onnx@edge", capsys)
    assert "a manifest of signed-onnx:2 that has expired" in error
    assert not (fresh / "current").exists()

    # a manifest for another alias, signed by the same key, is not this alias's
    edge_gateway.gateway.registry.set_alias("signed-onnx", "canary", first.version)
    canary = edge_gateway.get("/v1/edge/bundles/signed-onnx@canary", edge_gateway.admin_key).content
    wire.tamper = ("/bundles/signed-onnx@edge", lambda _body: canary)
    error = failed_sync(device, "signed-onnx@edge", capsys)
    assert "signed for 'signed-onnx@canary', not for 'signed-onnx@edge'" in error
    assert running(device) == second.ref and not leftovers(device)

    # a device enrolled with another key (another gateway's, or an impostor's) refuses them all
    enrolment = json.loads((device / "device.json").read_text())
    other = Ed25519PrivateKey.generate().public_key()
    enrolment["public_key"] = other.public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
    ).decode()
    (device / "device.json").write_text(json.dumps(enrolment))
    edge_gateway.gateway.registry.set_alias("signed-onnx", "edge", first.version)
    error = failed_sync(device, "signed-onnx@edge", capsys)
    assert "signature does not verify" in error and running(device) == second.ref
