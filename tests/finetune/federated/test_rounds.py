"""The coordinator's round state: what a restarted coordinator resumes from."""

from pathlib import Path

import numpy as np

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
