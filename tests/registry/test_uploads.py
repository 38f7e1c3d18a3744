"""Versions uploaded as tar archives over HTTP: archives made the usual ways (`tar -C DIR -cf
x.tar .` and Python's tarfile) are accepted, and what an archive may unpack to is bounded."""

import gzip
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.settings import StackSettings
from registry.api import create_app
from registry.service import Registry, open_registry
from registry.settings import RegistrySettings
from tests.native_code import LIBRARY, build_library


@pytest.fixture
def client(registry: Registry) -> TestClient:
    return TestClient(create_app(registry), raise_server_exceptions=False)


def _upload(client: TestClient, archive: bytes, name: str = "up"):
    return client.post(
        f"/v1/registry/models/{name}/versions/upload", files={"archive": ("v.tar", archive)}
    )


def _files(registry: Registry, ref: str) -> set[str]:
    digest = registry.resolve(ref).artifact_digest
    return {f.path for f in registry.artifacts.load_manifest(digest).files}


def _nothing_left(registry: Registry) -> bool:
    uploads = registry.artifacts.root / "uploads"
    return registry.list_models() == [] and not any(uploads.iterdir())


def test_an_archive_made_with_tar_dot_is_accepted(
    client: TestClient, registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    if shutil.which("tar") is None:
        pytest.skip("no tar command on this machine")
    archive = tmp_path / "x.tar"
    subprocess.run(["tar", "-C", model_dir, "-cf", archive, "."], check=True)
    with tarfile.open(archive) as tar:
        assert "." in tar.getnames()  # what this test is about
    r = _upload(client, archive.read_bytes())
    assert r.status_code == 201, r.text
    assert _files(registry, "up:1") == {
        "config.json",
        "model.safetensors",
        "tokenizer/tokenizer.json",
    }


def test_an_archive_of_a_folder_from_pythons_tarfile_is_accepted(
    client: TestClient, registry: Registry, model_dir: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model_dir, arcname=".")
        tar.add(model_dir / "config.json", arcname="./extra/config.json")
    r = _upload(client, buffer.getvalue())
    assert r.status_code == 201, r.text
    assert "extra/config.json" in _files(registry, "up:1")


def _zeros_archive(size: int) -> bytes:
    """A gzip tar holding one file of `size` zero bytes: a few KiB that unpack to `size`."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("model.safetensors")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    return buffer.getvalue()


def test_an_archive_that_unpacks_past_the_limit_is_refused(
    client: TestClient, registry: Registry
) -> None:
    registry.max_unpacked_bytes = 1 << 20
    bomb = _zeros_archive((1 << 20) + 1)
    assert len(bomb) < 10_000
    r = _upload(client, bomb)
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    assert error["code"] == "too_large" and error["param"] == "archive"
    assert "more than 1048576 bytes" in error["message"]
    assert "LLMOPS_MAX_UNPACKED_BYTES" in error["message"]
    assert _nothing_left(registry)
    # Up to the limit is fine.
    assert _upload(client, _zeros_archive(1 << 20)).status_code == 201


def test_the_unpacked_limit_is_a_setting_defaulting_to_a_multiple_of_the_upload_limit(
    settings: StackSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert RegistrySettings(max_upload_bytes=1000).unpacked_limit == 4000
    monkeypatch.setenv("LLMOPS_MAX_UNPACKED_BYTES", "1234")
    assert open_registry(settings).max_unpacked_bytes == 1234


def test_a_native_library_cannot_be_uploaded(
    client: TestClient, registry: Registry, model_dir: Path, tmp_path: Path
) -> None:
    build_library(model_dir / LIBRARY, tmp_path / "marker")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(model_dir, arcname=".")
    r = _upload(client, buffer.getvalue())
    assert r.status_code == 400, r.text
    assert "libevil.so is a native library (ELF)" in r.json()["error"]["message"]
    assert _nothing_left(registry)
