"""The drift monitor: a version's newest window of traffic against its reference, on every
signal both can speak to; each check stored. The gateway runs it now and then
(`serving.gateway`), and `llm-evals monitor` runs it from the command line."""

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from core.database import utc_now
from core.refs import parse_ref
from evals.drift.checks import DriftCheck, DriftStore, new_check_id
from evals.drift.config import DriftConfig
from evals.drift.embeddings import EmbeddingCache
from evals.drift.signals import Sample, compare, decide
from evals.drift.traffic import TrafficColumns, TrafficSource
from evals.feedback.labels import ratings
from finetune.data import as_messages, read_rows
from registry.service import Registry

log = logging.getLogger(__name__)

# (version, messages) -> the prompt as that version's chat template renders it, its tokens
Renderer = Callable[[str, list[dict[str, str]]], tuple[str, int]]


class TemplateRenderer:
    """Renders data-file prompts like the gateway renders chat requests, so that a data
    reference is compared with traffic on equal terms."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._tokenizers: dict[str, PreTrainedTokenizerBase] = {}

    def __call__(self, version: str, messages: list[dict[str, str]]) -> tuple[str, int]:
        if version not in self._tokenizers:
            base = self.registry.base_of(self.registry.resolve(version))
            self._tokenizers[version] = AutoTokenizer.from_pretrained(
                self.registry.local_copy(base)
            )
        tokenizer = self._tokenizers[version]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text, len(tokenizer(text, add_special_tokens=False).input_ids)


class DriftMonitor:
    def __init__(
        self,
        traffic: TrafficSource,
        engine: Engine,
        render: Renderer,
        *,
        embeddings: EmbeddingCache | None = None,
    ):
        self.traffic = traffic
        self.engine = engine  # the evaluation tables: checks, embeddings, feedback
        self.store = DriftStore(engine)
        self.render = render
        self.embeddings = embeddings or EmbeddingCache(engine)

    def check(self, version: str, config: DriftConfig) -> DriftCheck | None:
        """Check the version's newest window and store the result; None while there is too
        little traffic (in the window, or before it for the reference)."""
        window = self.traffic.columns(version, newest=config.window)
        if len(window) < config.min_window:
            return None
        reference, described = self._reference(version, config, before=window.start)
        if len(reference) < config.min_window:
            return None
        results = compare(reference, self.sample(version, window), config)
        verdict = decide(results, config)
        check = DriftCheck(
            id=new_check_id(),
            created_at=utc_now(),
            model=parse_ref(version).name,
            version=version,
            window_start=window.start,
            window_end=window.end,
            window_n=len(window),
            reference=described,
            signals=results,
            score=verdict.score,
            drifted=verdict.drifted,
            alarms=list(verdict.alarms),
        )
        return self.store.record(check)

    def sample(self, version: str, records: TrafficColumns) -> Sample:
        rated = ratings(self.engine, version, since=records.start)
        ids = set(records.request_id)
        return Sample(
            embeddings=self.embeddings.vectors(records.prompt),
            prompt_tokens=np.array(records.prompt_tokens),
            completion_tokens=np.array(records.completion_tokens),
            latency=np.array(records.latency_ms),
            finish_reasons=[reason or "unknown" for reason in records.finish_reason],
            ratings=np.array([v for k, v in rated.items() if k in ids]),
        )

    def _reference(
        self, version: str, config: DriftConfig, before: datetime
    ) -> tuple[Sample, dict[str, Any]]:
        spec = config.reference
        if spec.data:
            return self._data_reference(version, spec.data)
        end = min(spec.end, before) if spec.end is not None else before
        records = self.traffic.columns(version, start=spec.start, end=end, limit=spec.requests)
        described: dict[str, Any] = {"kind": "traffic", "n": len(records)}
        if not len(records):
            return Sample(np.empty((0, 0))), described
        described |= {"start": records.start.isoformat(), "end": records.end.isoformat()}
        return self.sample(version, records), described

    def _data_reference(self, version: str, files: list[Path]) -> tuple[Sample, dict[str, Any]]:
        prompts = []
        for path in files:
            for _, row in read_rows(path):
                messages = as_messages(row, "chat")
                while messages and messages[-1]["role"] == "assistant":
                    messages = messages[:-1]
                prompts.append(self.render(version, messages))
        sample = Sample(
            embeddings=self.embeddings.vectors([text for text, _ in prompts]),
            prompt_tokens=np.array([n for _, n in prompts]),
        )
        return sample, {"kind": "data", "files": [str(p) for p in files], "n": len(prompts)}
