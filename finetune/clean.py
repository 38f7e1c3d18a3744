"""`llm-finetune clean`: training data cleaned before any search or training. Rows are removed
when they are malformed (not JSON, empty or broken turns), too long, an exact or near
duplicate of an earlier row, or overlapping evaluation data (decontamination); personal data
in the rows that stay is masked with the traffic log's redactor. Every removal is reported
with its line and reason."""

import json
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.redaction import Redactor, redact_pii
from finetune.data import require_file, row_problem

_WORD = re.compile(r"\w+")
SHINGLE = 5  # characters per shingle for near-duplicate detection
PERMUTATIONS = 128  # MinHash signature length: 32 bands of 4 rows
BANDS = 32
CONTAMINATION_NGRAM = 8  # words a training row may share with an evaluation row, at most


@dataclass(frozen=True)
class CleanConfig:
    max_chars: int = 32_000  # a row longer than this (all its text) is removed
    near_duplicate: float = 0.8  # Jaccard similarity of character shingles to count as a copy
    redactor: Redactor | None = None


@dataclass
class CleanReport:
    kept: int = 0
    removed: dict[str, list[str]] = field(default_factory=dict)  # reason -> "line N: detail"
    masked: int = 0  # rows in which the redactor changed something

    def remove(self, reason: str, where: str) -> None:
        self.removed.setdefault(reason, []).append(where)

    def summary(self) -> dict[str, Any]:
        return {
            "kept": self.kept,
            "removed": {reason: len(lines) for reason, lines in self.removed.items()},
            "masked": self.masked,
            "lines": self.removed,
        }


def row_text(row: dict[str, Any]) -> str:
    """All the text of a row of any kind (chat, alpaca, text)."""
    if "messages" in row:
        return "\n".join(m["content"] for m in row["messages"])
    return "\n".join(str(row.get(k, "")) for k in ("instruction", "input", "output", "text"))


def prompt_text(row: dict[str, Any]) -> str:
    """What a row asks: its user turns, or its instruction and input, or its text."""
    if "messages" in row:
        return "\n".join(m["content"] for m in row["messages"] if m["role"] == "user")
    return "\n".join(str(row.get(k, "")) for k in ("instruction", "input", "text"))


def normalized(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def clean_rows(
    lines: Iterable[str], kind: str, config: CleanConfig, against: Iterable[str] = ()
) -> tuple[list[tuple[int, dict[str, Any]]], CleanReport]:
    """The rows of JSONL `lines` worth training on, with their line numbers, and what was
    removed and why. `against` holds the prompts of evaluation data that training rows must
    not overlap."""
    report = CleanReport()
    contaminated = _Contamination(against)
    exact: set[str] = set()
    near = _NearDuplicates(config.near_duplicate)
    kept = []
    for number, line in enumerate(lines, start=1):
        where = f"line {number}"
        row = _parse(line, kind)
        if isinstance(row, str):
            report.remove("malformed", f"{where}: {row}")
            continue
        text = row_text(row)
        if len(text) > config.max_chars:
            report.remove("too long", f"{where}: {len(text)} characters")
            continue
        if (overlap := contaminated.find(prompt_text(row))) is not None:
            report.remove("overlaps evaluation data", f"{where}: {overlap!r}")
            continue
        key = normalized(text)
        if key in exact:
            report.remove("exact duplicate", where)
            continue
        if (earlier := near.match(key, number)) is not None:
            report.remove("near duplicate", f"{where}: of line {earlier}")
            continue
        exact.add(key)
        if config.redactor is not None:
            masked = _redacted(row, config.redactor)
            report.masked += masked != row
            row = masked
        kept.append((number, row))
    report.kept = len(kept)
    return kept, report


def clean_file(
    path: Path, out: Path, kind: str, config: CleanConfig, against: list[Path]
) -> CleanReport:
    """Clean the JSONL at `path` into `out`, beside it the report as `<out>.report.json`."""
    prompts = (prompt_text(row) for p in against for row in _rows(p))
    with path.open(encoding="utf-8", errors="replace") as lines:
        rows, report = clean_rows(lines, kind, config, prompts)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for _, r in rows))
    out.with_suffix(".report.json").write_text(json.dumps(report.summary(), indent=2))
    return report


def clean_dataset(
    path: Path, kind: str, against: Iterable[str]
) -> tuple[list[tuple[str, dict[str, Any]]], CleanReport]:
    """A recipe's training file cleaned with the default settings and the built-in PII
    redactor: its rows as `read_rows` returns them, and the report."""
    require_file(path)
    with path.open(encoding="utf-8", errors="replace") as lines:
        rows, report = clean_rows(lines, kind, CleanConfig(redactor=redact_pii), against)
    return [(f"{path.name}:{number}", row) for number, row in rows], report


def _parse(line: str, kind: str) -> dict[str, Any] | str:
    """The row, or what is wrong with it."""
    if not line.strip():
        return "empty line"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return f"not JSON ({err.msg})"
    if problem := row_problem(row, kind):
        return problem
    if kind == "chat" and any(not m["content"].strip() for m in row["messages"]):
        return "a turn is empty"
    return row


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if line.strip():
                row = json.loads(line)
                if isinstance(row, dict):
                    yield row


def _redacted(row: dict[str, Any], redact: Redactor) -> dict[str, Any]:
    if "messages" in row:
        return {
            **row,
            "messages": [{**m, "content": redact(m["content"])} for m in row["messages"]],
        }
    return {k: redact(v) if isinstance(v, str) else v for k, v in row.items()}


class _Contamination:
    """Evaluation prompts, found again as a whole (short ones) or by a shared run of
    `CONTAMINATION_NGRAM` words (long ones)."""

    def __init__(self, prompts: Iterable[str]):
        self.whole: set[str] = set()
        self.ngrams: set[tuple[str, ...]] = set()
        for prompt in prompts:
            words = normalized(prompt).split()
            if len(words) < CONTAMINATION_NGRAM:
                self.whole.add(" ".join(words))
            self.ngrams.update(_ngrams(words))

    def find(self, prompt: str) -> str | None:
        words = normalized(prompt).split()
        if " ".join(words) in self.whole:
            return " ".join(words)
        for gram in _ngrams(words):
            if gram in self.ngrams:
                return " ".join(gram)
        return None


def _ngrams(words: list[str]) -> Iterator[tuple[str, ...]]:
    for i in range(len(words) - CONTAMINATION_NGRAM + 1):
        yield tuple(words[i : i + CONTAMINATION_NGRAM])


class _NearDuplicates:
    """MinHash over character shingles with locality-sensitive banding: rows that share a band
    are compared by their estimated Jaccard similarity."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        rng = np.random.default_rng(0)
        self._a = rng.integers(1, 2**31 - 1, PERMUTATIONS, dtype=np.uint64)
        self._b = rng.integers(0, 2**31 - 1, PERMUTATIONS, dtype=np.uint64)
        self._buckets: dict[tuple[int, bytes], list[int]] = {}
        self._signatures: dict[int, np.ndarray] = {}

    def match(self, text: str, number: int) -> int | None:
        """The line of an earlier near-duplicate of `text`, or None (and `text` is indexed)."""
        signature = self._signature(text)
        rows = PERMUTATIONS // BANDS
        bands = [(b, signature[b * rows : (b + 1) * rows].tobytes()) for b in range(BANDS)]
        candidates = Counter(n for band in bands for n in self._buckets.get(band, ()))
        for earlier, _ in candidates.most_common():
            if np.mean(self._signatures[earlier] == signature) >= self.threshold:
                return earlier
        for band in bands:
            self._buckets.setdefault(band, []).append(number)
        self._signatures[number] = signature
        return None

    def _signature(self, text: str) -> np.ndarray:
        shingles = {text[i : i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}
        hashes = np.array([zlib.crc32(s.encode()) for s in shingles], dtype=np.uint64)
        mixed = (np.outer(hashes, self._a) + self._b) % np.uint64(2**31 - 1)
        return mixed.min(axis=0)
