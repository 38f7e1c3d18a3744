import os
from pathlib import Path

import pytest

from core.errors import ErrorCode
from registry.artifacts import ArtifactStore, scan_directory
from registry.errors import RegistryError


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "home")


def test_put_and_fetch_round_trip(store: ArtifactStore, model_dir: Path, tmp_path: Path) -> None:
    manifest, manifest_path = store.put(model_dir)
    assert not Path(manifest_path).is_absolute()
    assert (store.home / manifest_path).is_file()
    assert {f.path for f in manifest.files} == {
        "config.json",
        "model.safetensors",
        "tokenizer/tokenizer.json",
    }
    dest = tmp_path / "out"
    store.fetch(manifest.digest, dest)
    for entry in manifest.files:
        assert (dest / entry.path).read_bytes() == (model_dir / entry.path).read_bytes()


def test_digest_depends_only_on_contents(tmp_path: Path, model_dir: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for entry in scan_directory(model_dir).files:
        (copy / entry.path).parent.mkdir(parents=True, exist_ok=True)
        (copy / entry.path).write_bytes((model_dir / entry.path).read_bytes())
    assert scan_directory(copy).digest == scan_directory(model_dir).digest
    (copy / "config.json").write_text("{}")
    assert scan_directory(copy).digest != scan_directory(model_dir).digest


def test_identical_files_are_stored_once(store: ArtifactStore, model_dir: Path) -> None:
    manifest, _ = store.put(model_dir)
    store.put(model_dir)
    blobs = [p for p in (store.root / "blobs").rglob("*") if p.is_file()]
    assert len(blobs) == len(manifest.files)


def test_tampered_file_is_named(store: ArtifactStore, model_dir: Path, tmp_path: Path) -> None:
    manifest, _ = store.put(model_dir)
    entry = next(f for f in manifest.files if f.path == "model.safetensors")
    blob = store.blob_path(entry.sha256)
    os.chmod(blob, 0o644)
    data = blob.read_bytes()
    blob.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped, whatever it was
    with pytest.raises(RegistryError, match=r"model.safetensors does not match its digest") as err:
        store.verify(manifest.digest)
    assert err.value.code is ErrorCode.INTEGRITY
    dest = tmp_path / "out"
    with pytest.raises(RegistryError, match=r"model.safetensors"):
        store.fetch(manifest.digest, dest)
    assert not dest.exists()
    assert not any(p.name.startswith(".out-") for p in tmp_path.iterdir())


def test_missing_file_is_named(store: ArtifactStore, model_dir: Path) -> None:
    manifest, _ = store.put(model_dir)
    entry = next(f for f in manifest.files if f.path == "config.json")
    store.blob_path(entry.sha256).unlink()
    with pytest.raises(RegistryError, match=r"config.json is missing"):
        store.verify(manifest.digest)


def test_modified_manifest_is_detected(store: ArtifactStore, model_dir: Path) -> None:
    manifest, manifest_path = store.put(model_dir)
    path = store.home / manifest_path
    path.write_text(path.read_text().replace("config.json", "other.json"))
    with pytest.raises(RegistryError, match=r"manifest .* was modified"):
        store.verify(manifest.digest)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pkl", ".ckpt", ".BIN", ".Pt"])
def test_pickle_weights_refused_unless_allowed(
    store: ArtifactStore, model_dir: Path, suffix: str
) -> None:
    (model_dir / f"pytorch_model{suffix}").write_bytes(b"\x80\x04pickle")
    with pytest.raises(RegistryError, match=r"pickle-based .*safetensors") as err:
        store.put(model_dir)
    assert err.value.code is ErrorCode.INVALID
    manifest, _ = store.put(model_dir, allow_pickle=True)
    assert any(f.path.endswith(suffix) for f in manifest.files)


def test_refuses_symlinks_empty_and_missing_dirs(
    store: ArtifactStore, model_dir: Path, tmp_path: Path
) -> None:
    (model_dir / "link").symlink_to("/etc/hostname")
    with pytest.raises(RegistryError, match=r"symbolic link"):
        store.put(model_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match=r"holds no files"):
        store.put(tmp_path / "empty")
    with pytest.raises(RegistryError, match=r"is not a directory"):
        store.put(tmp_path / "nope")


def test_fetch_refuses_non_empty_destination(
    store: ArtifactStore, model_dir: Path, tmp_path: Path
) -> None:
    manifest, _ = store.put(model_dir)
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(RegistryError, match=r"not empty"):
        store.fetch(manifest.digest, dest)
    assert (dest / "keep.txt").read_text() == "mine"


def test_a_stored_blob_is_verified_before_it_is_trusted(
    store: ArtifactStore, model_dir: Path
) -> None:
    manifest, _ = store.put(model_dir)
    entry = next(f for f in manifest.files if f.path == "model.safetensors")
    store.blob_path(entry.sha256).write_bytes(b"bit rot")
    store.put(model_dir)  # registering the same file again repairs the damaged blob
    assert store.verify(manifest.digest) == manifest


def test_files_reach_the_disk_before_they_are_renamed_into_place(
    store: ArtifactStore, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    manifest, _ = store.put(model_dir)
    # every blob and the manifest, and each rename's folder
    assert len(synced) == 2 * (len(manifest.files) + 1)


def test_a_cached_copy_that_changed_is_verified_and_fetched_again(
    store: ArtifactStore, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, _ = store.put(model_dir)
    cache = tmp_path / "cache" / "copy"
    store.cached_copy(manifest.digest, cache)
    original = (cache / "config.json").read_bytes()
    (cache / "config.json").write_text('{"model_type": "tampered"}')
    (cache / "extra.py").write_text("import os")
    store.cached_copy(manifest.digest, cache)
    assert (cache / "config.json").read_bytes() == original
    assert not (cache / "extra.py").exists()

    def hashing(*_args: object) -> None:
        raise AssertionError("an unchanged copy was hashed again")

    monkeypatch.setattr(store, "_check_copy_dir", hashing)
    assert store.cached_copy(manifest.digest, cache) == cache
