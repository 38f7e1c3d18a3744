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
lines still pending."""

import asyncio
import json
import logging
import secrets
import time
import uuid
from datetime import timedelta

from pydantic import BaseModel

from core.database import utc_now
from core.errors import ErrorCode, StackError
from core.http import ErrorDetail, ErrorEnvelope, error_type
from finetune.service import FineTuningService
from serving.auth import Authenticator, model_not_allowed
from serving.batches.config import BatchesConfig
from serving.batches.store import Batch, BatchStore, Line
from serving.embeddings import Embedder
from serving.engine import BATCH_PRIORITY
from serving.errors import ServingError
from serving.generation import Generator, RequestContext
from serving.keys import ApiKey, KeyStore
from serving.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

log = logging.getLogger(__name__)
_RETRIED = (ErrorCode.RATE_LIMITED, ErrorCode.UNAVAILABLE)  # wait and run the line again
_ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
_STATUS_EVERY_S = 0.5  # how often a running batch looks for a cancel


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

    async def run_forever(self) -> None:
        """Now and then: claim the batches no live process runs, and keep the leases."""
        while True:
            try:
                await asyncio.to_thread(
                    self.store.renew, list(self._running), self.holder, self.lease
                )
                for batch in await asyncio.to_thread(self.store.claim, self.holder, self.lease):
                    if batch.id not in self._running:
                        self._running[batch.id] = asyncio.create_task(self._run(batch))
            except Exception:
                log.exception("looking for batches to run failed; trying again later")
            await asyncio.sleep(self.config.poll_s)

    async def aclose(self) -> None:
        """Stop running batches; their leases go, so the next gateway resumes them at once."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for batch_id in list(self._running):
            await asyncio.to_thread(self.store.release, batch_id, self.holder)
        self._running.clear()

    async def _run(self, batch: Batch) -> None:
        try:
            if batch.status == "validating":
                await asyncio.to_thread(
                    self.store.move, batch.id, "in_progress", only_from=("validating",)
                )
            await self._lines(batch)
            await self._finalize(batch.id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s failed", batch.id)
            await asyncio.to_thread(
                self.store.move,
                batch.id,
                "failed",
                only_from=("validating", "in_progress", "finalizing", "cancelling"),
                errors=[{"code": "internal_error", "message": "the gateway failed the batch"}],
            )
        self._running.pop(batch.id, None)
        await asyncio.to_thread(self.store.release, batch.id, self.holder)

    async def _stopping(self, batch_id: str) -> bool:
        """Whether the batch was cancelled or ran out of its window."""
        current = await asyncio.to_thread(self.store.get, batch_id)
        return current is None or current.status != "in_progress" or current.expires_at < utc_now()

    async def _lines(self, batch: Batch) -> None:
        """Run the pending lines, `max_in_flight` at once, until done, cancelled or expired;
        lines running when it stops are abandoned (and stay pending)."""
        if await self._stopping(batch.id):
            return
        key = await asyncio.to_thread(self._key, batch.owner)
        pending = await asyncio.to_thread(self.store.lines, batch.id, "pending")
        room = asyncio.Semaphore(self.config.max_in_flight)
        tasks: set[asyncio.Task] = set()
        checked = asyncio.get_running_loop().time()
        stopped = False
        try:
            for line in pending:
                await room.acquire()
                now = asyncio.get_running_loop().time()
                if now - checked >= _STATUS_EVERY_S:
                    checked = now
                    if stopped := await self._stopping(batch.id):
                        break
                task = asyncio.create_task(self._line(batch, key, line))
                task.add_done_callback(lambda _t: room.release())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks and not stopped:
                await asyncio.wait(tasks, timeout=_STATUS_EVERY_S)
                stopped = bool(tasks) and await self._stopping(batch.id)
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

    async def _line(self, batch: Batch, key: ApiKey | None, line: Line) -> None:
        request_id = f"{batch.id}-{line.line}"
        give_up = time.monotonic() + self.config.retry_for_s
        while True:
            try:
                body = await self._call(batch, key, line, request_id)
            except StackError as err:
                wait = float(err.headers.get("Retry-After", 1))
                if err.code in _RETRIED and time.monotonic() + wait < give_up:
                    await asyncio.sleep(wait)
                    continue
                await self._finish(batch, line, request_id, error=err)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("line %d of batch %s failed", line.line, batch.id)
                error = StackError(
                    ErrorCode.INTERNAL, "the request failed; the server log has details"
                )
                await self._finish(batch, line, request_id, error=error)
                return
            await self._finish(batch, line, request_id, response=body)
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
        batch: Batch,
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
                batch.id,
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

    async def _finalize(self, batch_id: str) -> None:
        """Write the output and error files of the finished lines, and end the batch:
        completed, cancelled (asked to stop) or expired (out of its window)."""
        batch = await asyncio.to_thread(self.store.get, batch_id)
        assert batch is not None
        if batch.status == "in_progress":
            if batch.expires_at < utc_now():
                end = "expired"
            else:
                end = "completed"
                await asyncio.to_thread(
                    self.store.move, batch.id, "finalizing", only_from=("in_progress",)
                )
        elif batch.status == "cancelling":
            end = "cancelled"
        elif batch.status == "finalizing":
            end = "completed"
        else:
            return
        lines = await asyncio.to_thread(self.store.lines, batch.id)
        files = {}
        for status, purpose, name in (
            ("completed", "output_file_id", "output"),
            ("failed", "error_file_id", "error"),
        ):
            results = [json.dumps(line.result) + "\n" for line in lines if line.status == status]
            if results:
                files[purpose] = await asyncio.to_thread(
                    self.files.store_file,
                    batch.owner,
                    f"{batch.id}_{name}.jsonl",
                    "batch_output",
                    "".join(results).encode(),
                )
        await asyncio.to_thread(
            self.store.move,
            batch.id,
            end,
            only_from=("in_progress", "finalizing", "cancelling"),
            **files,
        )
