"""The registry router over HTTP, with the OpenAI error envelope."""

import io
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from registry.api import create_app
from registry.gates import MetricGate
from registry.service import Registry


@pytest.fixture
def client(registry: Registry, tmp_path: Path) -> TestClient:
    registry.import_root = tmp_path
    return TestClient(create_app(registry), raise_server_exceptions=False)


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    return error


def test_round_trip(client: TestClient, model_dir: Path, other_model_dir: Path) -> None:
    r = client.post("/v1/registry/models/demo/versions", json={"source_dir": str(model_dir)})
    assert r.status_code == 201 and r.json()["ref"] == "demo:1"
    r = client.post(
        "/v1/registry/models/demo/versions",
        json={"source_dir": str(other_model_dir), "parent": "demo:1", "metrics": {"em": 1}},
    )
    assert r.json()["parent"] == "demo:1"
    assert client.put("/v1/registry/models/demo/aliases/production", json={"version": 1}).is_success
    r = client.post("/v1/registry/models/demo/aliases/production/promote", json={"version": 2})
    assert (r.json()["from_version"], r.json()["to_version"]) == (1, 2)
    shown = client.get("/v1/registry/versions/demo").json()
    assert shown["ref"] == "demo:2" and [p["ref"] for p in shown["lineage"]] == ["demo:1"]
    r = client.post("/v1/registry/models/demo/aliases/production/rollback", json={"reason": "x"})
    assert r.json()["to_version"] == 1
    history = client.get("/v1/registry/models/demo/history").json()["data"]
    assert [e["action"] for e in history] == ["set", "promote", "rollback"]
    models = client.get("/v1/registry/models").json()["data"]
    assert models[0]["aliases"] == {"production": 1} and models[0]["latest_version"] == 2
    page = client.get("/v1/registry/models/demo/versions", params={"limit": 1}).json()
    assert [v["ref"] for v in page["data"]] == ["demo:1"] and page["has_more"] is True
    rest = client.get("/v1/registry/models/demo/versions", params={"after": page["last_id"]})
    assert [v["ref"] for v in rest.json()["data"]] == ["demo:2"] and not rest.json()["has_more"]
    files = client.get("/v1/registry/versions/demo:1/files").json()["data"]
    r = client.get("/v1/registry/versions/demo:1/files/config.json")
    assert r.content == (model_dir / "config.json").read_bytes()
    assert len(files) == 3
    assert client.post("/v1/registry/versions/demo:2/verify").json()["ok"] is True


def test_errors_use_the_openai_envelope(client: TestClient, model_dir: Path) -> None:
    error = _error(client.get("/v1/registry/versions/nope:1"), 404, "model_not_found")
    assert "does not exist" in error["message"] and error["type"] == "invalid_request_error"
    # The OpenAPI document's patterns refuse bad references before any lookup.
    assert (
        _error(client.get("/v1/registry/versions/bad%20name:1"), 400, "invalid_request")["param"]
        == "ref"
    )
    # Integers that do not fit the database's columns are refused, not a server error.
    _error(client.get("/v1/registry/versions/demo:99999999999"), 400, "invalid_request")
    r = client.get("/v1/registry/models/demo/history", params={"after": 2**40})
    _error(r, 400, "invalid_request")
    r = client.put("/v1/registry/models/demo/aliases/production", json={"version": 2**40})
    _error(r, 400, "invalid_request")
    _error(client.get("/v1/registry/no-such-route"), 404, "not_found")
    body = {"source_dir": str(model_dir)}
    client.post("/v1/registry/models/demo/versions", json=body)
    _error(client.post("/v1/registry/models/demo/versions", json=body), 409, "already_exists")
    error = _error(
        client.put("/v1/registry/models/demo/aliases/production", json={"version": 0}),
        400,
        "invalid_request",
    )
    assert error["param"] == "version"
    r = client.put(
        "/v1/registry/models/demo/aliases/production",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    _error(r, 400, "invalid_request")
    r = client.post(
        "/v1/registry/models/demo/aliases/production/promote",
        json={"version": 1, "force_reason": ""},
    )
    assert _error(r, 400, "invalid_request")["param"] == "force_reason"
    r = client.get("/v1/registry/versions/demo:1/files/missing.txt")
    _error(r, 404, "file_not_found")


def test_gate_failure_is_422(
    client: TestClient, registry: Registry, model_dir: Path, other_model_dir: Path
) -> None:

    registry.gate = MetricGate("em")
    registry.register("demo", model_dir, metrics={"em": 0.9})
    registry.register("demo", other_model_dir, metrics={"em": 0.1})
    registry.promote("demo:1", "production")
    r = client.post("/v1/registry/models/demo/aliases/production/promote", json={"version": 2})
    assert "failed gate" in _error(r, 422, "gate_failed")["message"]
    body = {"version": 2, "force_reason": "the metric is wrong for this release"}
    r = client.post("/v1/registry/models/demo/aliases/production/promote", json=body)
    assert r.json()["forced"] is True and r.json()["reason"] == body["force_reason"]


def _tar(files: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return buffer.getvalue()


def _upload(client: TestClient, archive: bytes, metadata: str = "{}"):
    return client.post(
        "/v1/registry/models/up/versions/upload",
        files={"archive": ("v.tar.gz", archive)},
        data={"metadata": metadata},
    )


def test_http_registration_reads_no_server_path_outside_the_import_root(
    client: TestClient, registry: Registry, tmp_path: Path
) -> None:
    for outside in ("/etc", "../../etc", str(tmp_path.parent)):
        r = client.post("/v1/registry/models/x/versions", json={"source_dir": outside})
        assert "import root" in _error(r, 403, "permission_denied")["message"]
    registry.import_root = None
    (tmp_path / "inside").mkdir()
    (tmp_path / "inside" / "config.json").write_text("{}")
    r = client.post("/v1/registry/models/x/versions", json={"source_dir": "inside"})
    assert "upload the files as a tar" in _error(r, 403, "permission_denied")["message"]
    assert registry.list_models() == []


def test_a_version_uploads_as_a_tar_archive(client: TestClient, registry: Registry) -> None:
    files = {"config.json": b'{"model_type": "llama"}', "weights/model.safetensors": b"w" * 100}
    bad_digest = '{"expected_digest": "sha256:' + "0" * 64 + '"}'
    assert (
        "not the expected"
        in _error(_upload(client, _tar(files), bad_digest), 400, "invalid")["message"]
    )
    for archive, fragment in [
        (_tar({"../escape.txt": b"x"}), "leaves the version folder"),
        (_tar({"/abs.txt": b"x"}), "leaves the version folder"),
        (_tar({"a.txt": b"x"}, links=("link",)), "not a regular file"),
        (b"not a tar at all", "not a readable tar"),
    ]:
        assert fragment in _error(_upload(client, archive), 400, "invalid")["message"]
    _error(_upload(client, _tar(files), '{"kind": "weights"}'), 400, "invalid")
    assert registry.list_models() == []

    r = _upload(client, _tar(files), '{"kind": "base", "tags": {"via": "upload"}}')
    assert r.status_code == 201, r.text
    assert r.json()["ref"] == "up:1" and r.json()["tags"] == {"via": "upload"}
    shown = client.get("/v1/registry/versions/up:1/files").json()["data"]
    assert sorted(f["path"] for f in shown) == sorted(files)
    again = _upload(
        client, _tar(files), '{"expected_digest": "' + r.json()["artifact_digest"] + '"}'
    )
    _error(again, 409, "already_exists")


def test_promotion_requests_over_http(
    client: TestClient, registry: Registry, model_dir: Path, other_model_dir: Path
) -> None:
    registry.register("demo", model_dir)
    registry.register("demo", other_model_dir, parent="demo:1")
    registry.set_alias("demo", "production", 1)
    base = "/v1/registry/models/demo"
    r = client.post(f"{base}/aliases/production/requests", json={"version": 2, "reason": "r"})
    assert r.status_code == 201 and r.json()["status"] == "pending"
    own = client.post(f"{base}/requests/{r.json()['id']}/approve", json={})
    _error(own, 403, "permission_denied")
    other = registry.acting_as("alice").request_promotion("demo:2", "staging", reason="try")
    _error(
        client.post(f"/v1/registry/models/nope/requests/{other.id}/approve", json={}),
        404,
        "model_not_found",
    )
    moved = client.post(f"{base}/requests/{other.id}/approve", json={"reason": "ok"})
    assert moved.status_code == 200 and moved.json()["to_version"] == 2
    listed = client.get(f"{base}/requests", params={"status": "approved"}).json()["data"]
    assert [(x["id"], x["requested_by"], x["event_id"]) for x in listed] == [
        (other.id, "alice", moved.json()["id"])
    ]
    _error(
        client.post(f"{base}/requests/999/reject", json={"reason": "no"}), 404, "model_not_found"
    )


def test_a_two_person_alias_moves_alone_only_with_a_break_glass_reason_over_http(
    client: TestClient, registry: Registry, model_dir: Path, other_model_dir: Path
) -> None:
    registry.register("demo", model_dir)
    registry.register("demo", other_model_dir, parent="demo:1")
    registry.set_alias("demo", "production", 1)
    registry.two_person_aliases = frozenset({"production"})
    base = "/v1/registry/models/demo/aliases/production"
    for method, path, body in [
        ("PUT", base, {"version": 2}),
        ("POST", f"{base}/promote", {"version": 2, "force_reason": "gate is wrong"}),
        ("POST", f"{base}/rollback", {}),
        ("DELETE", base, None),
    ]:
        error = _error(client.request(method, path, json=body), 403, "break_glass_required")
        assert error["param"] == "break_glass_reason"
        assert "second admin approves" in error["message"]
    _error(client.put(base, json={"version": 2, "break_glass_reason": " "}), 400, "invalid_request")
    moved = client.put(base, json={"version": 2, "break_glass_reason": "incident 42"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["break_glass_reason"] == "incident 42"
    deleted = client.delete(base, params={"break_glass_reason": "retire it"})
    assert deleted.json()["break_glass_reason"] == "retire it"
    history = client.get("/v1/registry/models/demo/history").json()["data"]
    assert [e["break_glass_reason"] for e in history] == [None, "incident 42", "retire it"]
