"""The coordinator's round state: what a restarted coordinator resumes from."""

import os
from pathlib import Path

import numpy as np
import pytest

from finetune.federated.rounds import RoundLog, RoundRecord, SiloReport


def _record(round_: int) -> RoundRecord:
    silo = SiloReport(silo_id="a", data_digest="sha256:00", num_examples=4, train_loss=1.5)
    return RoundRecord(
        round=round_,
        train_loss=1.5,
        num_examples=4,
        silos=[silo],
        failures=0,
        bytes_sent=10,
        bytes_received=12,
        seconds=0.1,
    )


def test_a_reopened_log_resumes_after_the_last_completed_round(tmp_path: Path) -> None:
    fresh = RoundLog.open(tmp_path)
    assert fresh.completed == 0 and fresh.arrays() is None
    fresh.complete(_record(1), [np.zeros((2, 3), np.float32), np.ones(4, np.float32)])
    fresh.complete(_record(2), [np.full((2, 3), 2, np.float32), np.ones(4, np.float32)])

    reopened = RoundLog.open(tmp_path)
    assert reopened.completed == 2 and reopened.records == fresh.records
    first, second = reopened.arrays()
    assert first.shape == (2, 3) and (first == 2).all() and second.shape == (4,)
    # Only the last round's tensors are kept; no temporary file is left behind.
    assert sorted(p.name for p in (tmp_path / "rounds").iterdir()) == [
        "global-0002.npz",
        "state.json",
    ]


def test_round_state_is_fsynced_file_then_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file is on disk before its rename, and the rename before `complete` returns:
    the real fsync and rename run, and the order in which they ran is recorded."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(source: str | Path, target: str | Path) -> None:
        real_replace(source, target)
        events.append(("replace", str(target)))

    log = RoundLog.open(tmp_path)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    log.complete(_record(1), [np.zeros((2, 3), np.float32)])
    folder = tmp_path / "rounds"
    expected = []
    for name in ("global-0001.npz", "state.json"):
        expected += [
            ("fsync", str(folder / f"{name}.tmp")),
            ("replace", str(folder / name)),
            ("fsync", str(folder)),
        ]
    assert events == expected
