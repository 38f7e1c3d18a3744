"""Runs batches in the gateway process: each line through the live endpoint's own handler
(`Generator.chat`, `Generator.complete`, `Embedder.embed`), so the same limits, key checks,
metrics and traffic log apply, owned by the key that made the batch.

Batch lines run below live traffic: at most `max_in_flight` lines of a batch at once, and on
the local engine at `BATCH_PRIORITY`, so the continuous batch admits waiting live requests
first. (vLLM schedules first come first served unless started with `--scheduling-policy
priority`; the bound on lines in flight is what leaves it room for live traffic.) A line the
key's rate limit or a full engine turns away waits and runs again while its next try falls
within `retry_for_s`.

Each finished line is stored at once; a restarted gateway claims the batch again (after the
lease of the process that ran it ends, at once after a clean shutdown) and runs only the
lines still pending. The update that ends a batch empties its lines (see `BatchStore`), and
every `Retention.every_s` the runner deletes the lines past the traffic log's retention or
whose files were deleted."""

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta

from pydantic import BaseModel

from core.database import utc_now
from core.errors import ErrorCode, StackError
from core.http import ErrorDetail, ErrorEnvelope, error_type
from core.leases import Lease, LeaseLost
from core.logs import bind_request, tag_request
from finetune.service import FineTuningService
from serving.auth import Authenticator, model_not_allowed
from serving.batches.config import BatchesConfig
from serving.batches.store import ACTIVE, Batch, BatchStore, Line
from serving.embeddings import Embedder
from serving.engine import BATCH_PRIORITY
from serving.errors import ServingError
from serving.generation import Generator, RequestContext
from serving.keys import ApiKey, KeyStore
from serving.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from serving.traffic import Retention

log = logging.getLogger(__name__)
_RETRIED = (ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE)  # wait and run the line again
_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
_STATUS_EVERY_S = 0.5  # how often a running batch looks for a cancel
_OUTPUTS = (("completed", "output_file_id", "output"), ("failed", "error_file_id", "error"))


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        files: FineTuningService,
        keys: KeyStore,
        generator: Generator,
        config: BatchesConfig,
    ):
        self.store = store
        self.files = files
        self.keys = keys
        self.generator = generator
        self.config = config
        self.holder = f"gateway-{uuid.uuid4().hex}"
        self.lease = timedelta(seconds=config.lease_s)
        self._running: dict[str, asyncio.Task] = {}
        self._leases: dict[str, Lease] = {}
        traffic = generator.traffic
        self.retention = traffic.retention if traffic is not None else Retention()

    async def run_forever(self) -> None:
        """Now and then: keep the leases (stopping a batch whose lease another process took
        over), claim the batches no live process runs, and sweep old lines."""
        next_sweep = 0.0
        while True:
            try:
                if time.monotonic() >= next_sweep:
                    await asyncio.to_thread(self.sweep)
                    next_sweep = time.monotonic() + self.retention.every_s
                await self._renew()
                for batch, lease in await asyncio.to_thread(
                    self.store.claim, self.holder, self.lease
                ):
                    self._leases[batch.id] = lease
                    self._running[batch.id] = asyncio.create_task(self._run(batch, lease))
            except Exception:
                log.exception("looking for batches to run failed; trying again later")
            await asyncio.sleep(self.config.poll_s)

    def sweep(self) -> int:
        """Delete the lines past the retention, or whose output or error file is gone."""
        return self.store.sweep(utc_now() - self.retention.max_age)

    async def _renew(self) -> None:
        for batch_id, lease in list(self._leases.items()):
            try:
                self._leases[batch_id] = await asyncio.to_thread(
                    self.store.renew, lease, self.lease
                )
            except LeaseLost:
                log.warning("another process took batch %s over; this one stops it", batch_id)
                self._leases.pop(batch_id, None)
                task = self._running.pop(batch_id, None)
                if task is not None:
                    task.cancel()

    async def aclose(self) -> None:
        """Stop running batches; their leases go, so the next gateway resumes them at once."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lease in list(self._leases.values()):
            await asyncio.to_thread(self.store.release, lease)
        self._running.clear()
        self._leases.clear()

    async def _run(self, batch: Batch, lease: Lease) -> None:
        try:
            if batch.status == "validating":
                await asyncio.to_thread(
                    self.store.move,
                    batch.id,
                    "in_progress",
                    only_from=("validating",),
                    lease=lease,
                )
            await self._lines(batch, lease)
            await self._finalize(batch.id, lease)
        except asyncio.CancelledError:
            raise
        except LeaseLost:
            log.warning("another process took batch %s over; this one stops it", batch.id)
            self._forget(batch.id)
            return
        except Exception:
            log.exception("batch %s failed", batch.id)
            await asyncio.to_thread(
                self.store.move,
                batch.id,
                "failed",
                only_from=ACTIVE,
                lease=lease,
                empty_lines=True,
                errors=[{"code": "internal_error", "message": "the gateway failed the batch"}],
            )
        self._forget(batch.id)
        await asyncio.to_thread(self.store.release, lease)

    def _forget(self, batch_id: str) -> None:
        self._running.pop(batch_id, None)
        self._leases.pop(batch_id, None)

    async def _stopping(self, lease: Lease) -> bool:
        """Whether the batch was cancelled or ran out of its window; `LeaseLost` when another
        process took it over."""
        current = await asyncio.to_thread(self.store.get, lease.item_id)
        if current is not None and current.lease_epoch != lease.epoch:
            raise LeaseLost(lease.item_id)
        return current is None or current.status != "in_progress" or current.expires_at < utc_now()

    def _key_lost(self, batch: Batch, lease: Lease, models: set[str]) -> bool:
        """Whether the key that made the batch was revoked (or deleted), or no longer allows
        a model of its lines that it allowed when they started; if so the batch is now
        cancelling, with the reason in its errors."""
        if batch.owner is None:
            return False
        key = self.keys.active(batch.owner)
        if key is None:
            code = "invalid_api_key"
            message = "the API key that made this batch was revoked; the batch was cancelled"
        elif lost := sorted(m for m in models if not key.allows(m)):
            code = "model_not_allowed"
            message = (
                f"the API key that made this batch may no longer use the model `{lost[0]}`; "
                "the batch was cancelled"
            )
        else:
            return False
        self.store.move(
            batch.id,
            "cancelling",
            only_from=("in_progress",),
            lease=lease,
            errors=[{"code": code, "message": message}],
        )
        return True

    async def _lines(self, batch: Batch, lease: Lease) -> None:
        """Run the pending lines, `max_in_flight` at once, until done, cancelled, expired or
        the key is revoked (checked before every group of `max_in_flight` lines); lines
        running when it stops are abandoned (and stay pending)."""
        if await self._stopping(lease):
            return
        key = await asyncio.to_thread(self._key, batch.owner)
        pending = await asyncio.to_thread(self.store.lines, batch.id, "pending")
        models = {str(line.body.get("model")) for line in pending}
        if key is not None:
            models = {m for m in models if key.allows(m)}  # lines of others fail one by one
        group = self.config.max_in_flight
        room = asyncio.Semaphore(group)
        tasks: set[asyncio.Task] = set()
        checked = asyncio.get_running_loop().time()
        stopped = False
        try:
            for number, line in enumerate(pending):
                await room.acquire()
                now = asyncio.get_running_loop().time()
                if number % group == 0 and await asyncio.to_thread(
                    self._key_lost, batch, lease, models
                ):
                    stopped = True
                    break
                if now - checked >= _STATUS_EVERY_S:
                    checked = now
                    if stopped := await self._stopping(lease):
                        break
                task = asyncio.create_task(self._line(batch, lease, key, line))
                task.add_done_callback(lambda _t: room.release())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks and not stopped:
                await asyncio.wait(tasks, timeout=_STATUS_EVERY_S)
                stopped = bool(tasks) and (
                    await asyncio.to_thread(self._key_lost, batch, lease, models)
                    or await self._stopping(lease)
                )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _key(self, owner: str | None) -> ApiKey | None:
        if owner is None:
            return None
        try:
            return self.keys.get(owner)
        except StackError:
            return None  # deleted: each line fails as for a revoked key

    async def _line(self, batch: Batch, lease: Lease, key: ApiKey | None, line: Line) -> None:
        request_id = f"{batch.id}-{line.line}"
        bind_request(request_id)  # this task's own context: only this line's records
        if key is not None:
            tag_request(key_id=key.id)
        give_up = time.monotonic() + self.config.retry_for_s
        while True:
            try:
                body = await self._call(batch, key, line, request_id)
            except StackError as err:
                wait = float(err.headers.get("Retry-After", 1))
                if err.code in _RETRIED and time.monotonic() + wait < give_up:
                    await asyncio.sleep(wait)
                    continue
                await self._finish(lease, line, request_id, error=err)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("line %d of batch %s failed", line.line, batch.id)
                error = StackError(
                    ErrorCode.INTERNAL, "the request failed; the server log has details"
                )
                await self._finish(lease, line, request_id, error=error)
                return
            await self._finish(lease, line, request_id, response=body)
            return

    async def _call(
        self, batch: Batch, key: ApiKey | None, line: Line, request_id: str
    ) -> BaseModel:
        if batch.owner is not None and (key is None or key.revoked_at is not None):
            raise ServingError(
                ErrorCode.UNAUTHENTICATED,
                "the API key that made this batch was revoked",
                api_code="invalid_api_key",
            )
        model = str(line.body.get("model"))
        if key is not None and not key.allows(model):
            raise model_not_allowed(key, model)
        endpoint = _ENDPOINTS.get(batch.endpoint, "embeddings")
        ctx = RequestContext(
            request_id, key, Authenticator.caller_of(key), endpoint, priority=BATCH_PRIORITY
        )
        if batch.endpoint == "/v1/chat/completions":
            result = await self.generator.chat(ChatCompletionRequest.model_validate(line.body), ctx)
        elif batch.endpoint == "/v1/completions":
            result = await self.generator.complete(CompletionRequest.model_validate(line.body), ctx)
        else:
            result = await Embedder(self.generator).embed(
                EmbeddingRequest.model_validate(line.body), ctx
            )
        assert isinstance(result, BaseModel)  # lines never stream
        return result

    async def _finish(
        self,
        lease: Lease,
        line: Line,
        request_id: str,
        *,
        response: BaseModel | None = None,
        error: StackError | None = None,
    ) -> None:
        if response is not None:
            status, body = 200, response.model_dump(mode="json")
        else:
            assert error is not None
            status = error.http_status
            detail = ErrorDetail(
                message=error.message,
                type=error_type(status),
                param=error.param,
                code=error.api_code,
            )
            body = ErrorEnvelope(error=detail).model_dump()
        usage = body.get("usage") or {}
        result = {
            "id": f"batch_req_{secrets.token_hex(12)}",
            "custom_id": line.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
        write = asyncio.ensure_future(
            asyncio.to_thread(
                self.store.finish_line,
                lease,
                line.line,
                ok=status == 200,
                result=result,
                input_tokens=usage.get("prompt_tokens", 0),
                output_tokens=usage.get("completion_tokens", 0),
            )
        )
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # The batch is stopping, but this line is done: its result is stored before the
            # output file is written, or the file and the counts would disagree.
            await write
            raise

    async def _finalize(self, batch_id: str, lease: Lease) -> None:
        """Write the output and error files of the finished lines, and end the batch:
        completed, cancelled (asked to stop) or expired (out of its window).

        The files are stored first, then one fenced update ends the batch and points at them.
        A process that lost the lease meanwhile discards its files; the one that ends the
        batch discards the files of an earlier try that stopped before it ended it (a crash),
        so a batch ends once, with one output and one error file at most."""
        batch = await asyncio.to_thread(self.store.get, batch_id)
        assert batch is not None
        if batch.status == "in_progress":
            if batch.expires_at < utc_now():
                end = "expired"
            else:
                end = "completed"
                if not await asyncio.to_thread(
                    self.store.move,
                    batch.id,
                    "finalizing",
                    only_from=("in_progress",),
                    lease=lease,
                ):  # cancelled meanwhile, or taken over
                    await self._stopping(lease)
                    return await self._finalize(batch_id, lease)
        elif batch.status == "cancelling":
            end = "cancelled"
        elif batch.status == "finalizing":
            end = "completed"
        else:
            return
        ending = asyncio.ensure_future(asyncio.to_thread(self._end, batch, lease, end))
        try:
            ended = await asyncio.shield(ending)
        except asyncio.CancelledError:
            await ending  # the files and the batch's end agree before the task stops
            raise
        if not ended:
            raise LeaseLost(batch.id)

    def _end(self, batch: Batch, lease: Lease, end: str) -> bool:
        """Store the files, end the batch with them under `lease`; whether it did."""
        lines = self.store.lines(batch.id)
        files: dict[str, str] = {}
        try:
            for status, purpose, name in _OUTPUTS:
                results = [json.dumps(x.result) + "\n" for x in lines if x.status == status]
                if results:
                    files[purpose] = self.files.store_file(
                        batch.owner,
                        f"{batch.id}_{name}.jsonl",
                        "batch_output",
                        "".join(results).encode(),
                    )
            ended = self.store.move(
                batch.id,
                end,
                only_from=("in_progress", "finalizing", "cancelling"),
                lease=lease,
                empty_lines=True,
                **files,
            )
        except BaseException:
            self._discard(files.values())
            raise
        if not ended:
            self._discard(files.values())
            return False
        names = {f"{batch.id}_{name}.jsonl" for _, _, name in _OUTPUTS}
        self._discard(
            f.id
            for f in self.files.files.list(batch.owner, purpose="batch_output")
            if f.owner == batch.owner and f.filename in names and f.id not in files.values()
        )
        return True

    def _discard(self, file_ids: Iterable[str]) -> None:
        for file_id in list(file_ids):
            stored = self.files.files.get(file_id)
            if stored is not None and self.files.files.delete(file_id):
                (self.files.runner.stack.resolved_home / stored.path).unlink(missing_ok=True)
