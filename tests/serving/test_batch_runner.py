"""The batch runner: a batch stops when the key that made it is revoked (cancelled, with the
reason in its errors and the lines that finished before in its output file), and a batch
ends once, with one file of each kind, whoever tries to finalise it."""

import json
import time
from datetime import timedelta
from pathlib import Path

import openai

from core.database import utc_now
from serving.batches.store import Batch, Line, new_batch_id
from tests.serving.conftest import LIMITS, running_gateway
from tests.serving.test_batches import BATCHES, _chat, _gateway, _upload


def test_a_revoked_key_cancels_its_running_batch(tmp_path: Path, random_model_dir: Path) -> None:
    with _gateway(tmp_path, random_model_dir) as gw:
        alice, secret = gw.gateway.keys.create("alice")
        client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=secret, max_retries=0)
        rows = [_chat(f"r{i}", f"count to {i}", max_tokens=48, temperature=0) for i in range(300)]
        batch = client.batches.create(
            input_file_id=_upload(client, rows),
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )
        store = gw.gateway.batches.store
        deadline = time.monotonic() + 120
        while store.get(batch.id).completed < 4:
            assert time.monotonic() < deadline, "the batch never started"
            time.sleep(0.05)
        gw.gateway.keys.revoke(alice.id)

        while (done := store.get(batch.id)).status != "cancelled":
            assert time.monotonic() < deadline, f"the batch went on: {done.status}"
            time.sleep(0.05)
        assert done.errors is not None and done.errors[0]["code"] == "invalid_api_key"
        assert "revoked" in done.errors[0]["message"] and done.cancelled_at
        assert 4 <= done.completed < 300 and done.failed == 0  # no line ran as revoked
        output = gw.gateway.fine_tuning.files.get(done.output_file_id)
        assert output is not None and output.rows == done.completed
        lines = (tmp_path / output.path).read_text().splitlines()
        assert {json.loads(x)["custom_id"] for x in lines} == {
            x.custom_id for x in store.lines(batch.id, "completed")
        }
        time.sleep(0.5)  # nothing runs after the cancel
        assert store.get(batch.id).completed == done.completed


def test_a_batch_ends_once_with_one_file_of_each_kind(
    tmp_path: Path, random_model_dir: Path
) -> None:
    """Gateway a stored its files and stopped before it ended the batch (a crash); gateway b
    took over; a, still running, tries to end it: a's files are discarded, b's stay."""
    quiet = {**BATCHES, "poll_s": 600}  # the gateway's own runner claims nothing here
    with running_gateway(tmp_path, random_model_dir, limits=LIMITS, batches=quiet) as gw:
        runner, files = gw.gateway.batch_runner, gw.gateway.fine_tuning
        store = runner.store
        now = utc_now()
        batch = store.create(
            Batch(
                id=new_batch_id(), owner=None, endpoint="/v1/completions",
                input_file_id="file-x", completion_window="24h", model="demo",
                metadata=None, status="in_progress", total=2, created_at=now,
                expires_at=now + timedelta(hours=24),
            ),
            [Line(1, "a", {"model": "demo", "prompt": "x"}), Line(2, "b", {"prompt": "y"})],
        )  # fmt: skip
        [(_, a)] = store.claim("gateway-a", timedelta(seconds=-1))
        store.finish_line(a, 1, ok=True, result={"custom_id": "a"})
        store.finish_line(a, 2, ok=False, result={"custom_id": "b"})
        files.store_file(None, f"{batch.id}_output.jsonl", "batch_output", b"{}\n")
        [(_, b)] = store.claim("gateway-b", timedelta(seconds=60))

        assert not runner._end(store.get(batch.id), a, "completed")
        assert store.get(batch.id).status == "in_progress"
        assert runner._end(store.get(batch.id), b, "completed")

        done = store.get(batch.id)
        assert done.status == "completed" and done.completed_at
        kept = files.files.list(None, purpose="batch_output")
        assert sorted((f.filename, f.id) for f in kept) == [
            (f"{batch.id}_error.jsonl", done.error_file_id),
            (f"{batch.id}_output.jsonl", done.output_file_id),
        ]
        on_disk = sorted(p.relative_to(tmp_path) for p in (tmp_path / "files").iterdir())
        assert on_disk == sorted(Path(f.path) for f in kept)  # the discarded ones are gone
