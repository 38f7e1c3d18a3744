"""Training data: read and validate JSONL rows, tokenize them with the base model's chat
template (loss on assistant tokens only), and optionally pack them into full sequences.

Three row types, as in axolotl: `chat` (OpenAI fine-tuning `messages`), `alpaca`
(`instruction`, optional `input`, `output`) and `text` (raw `text`, loss on every token).
Every problem is reported with its file and line number."""

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from core.errors import ErrorCode
from finetune.errors import FinetuneError

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")
MAX_REPORTED = 10  # bad rows named in the message
MAX_COLLECTED = 100  # bad rows after which checking a file stops


class DataError(FinetuneError):
    """Rows that cannot be trained on. `problems` holds one "file:line: what" per bad row."""

    def __init__(self, problems: Sequence[str], stopped_at: int | None = None):
        self.problems = list(problems)
        shown = "; ".join(self.problems[:MAX_REPORTED])
        more = len(self.problems) - MAX_REPORTED
        suffix = f"; and {more} more" if more > 0 else ""
        count = f"{len(self.problems)} bad row{'s' if len(self.problems) > 1 else ''}"
        if stopped_at is not None:
            count += f" (checking stopped at line {stopped_at})"
        super().__init__(
            ErrorCode.INVALID,
            f"{count}: {shown}{suffix}",
            param="training_file",
            api_code="invalid_training_file",
        )


@dataclass(frozen=True)
class Example:
    """One tokenized row; `line` is where it came from, for error messages."""

    input_ids: list[int]
    labels: list[int]
    line: str

    def __len__(self) -> int:
        return len(self.input_ids)


def row_problem(row: Any, kind: str) -> str | None:
    """What is wrong with one parsed row of `kind`, or None."""
    if not isinstance(row, dict):
        return "expected a JSON object"
    if kind == "text":
        if not isinstance(row.get("text"), str) or not row["text"]:
            return "`text` is missing or empty"
        return None
    if kind == "alpaca":
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str) or not row[key]:
                return f"`{key}` is missing or empty"
        if not isinstance(row.get("input", ""), str):
            return "`input` must be a string"
        return None
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return "`messages` is missing or empty"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] is not an object"
        role = message.get("role")
        if role not in ROLES:
            return f"messages[{i}] has unknown role {role!r}; use one of {', '.join(ROLES)}"
        if not isinstance(message.get("content"), str):
            return f"messages[{i}] has no string `content`"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message to learn from"
    return None


def require_file(path: Path) -> None:
    """DataError unless `path` is a file."""
    if not path.is_file():
        raise DataError([f"{path}: no such file"])


def iter_rows(path: Path, kind: str = "chat") -> Iterator[tuple[str, dict[str, Any]]]:
    """Parse and check each line of a JSONL file, yielding ("file:line", row) for the good
    ones, one at a time, so that nothing is kept that the caller does not keep.

    Raises DataError listing the bad lines once the file is read (or at MAX_COLLECTED of them,
    where checking stops), so a user can fix them in one pass; also for a file with no rows."""
    path = Path(path)
    require_file(path)
    good, problems = 0, []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if len(problems) >= MAX_COLLECTED:
                raise DataError(problems, stopped_at=number)
            where = f"{path.name}:{number}"
            if not line.strip():
                problems.append(f"{where}: empty line")
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{where}: not JSON ({err.msg})")
                continue
            if problem := row_problem(row, kind):
                problems.append(f"{where}: {problem}")
            else:
                good += 1
                yield where, row
    if problems:
        raise DataError(problems)
    if not good:
        raise DataError([f"{path.name}: no rows"])


def read_rows(path: Path, kind: str = "chat") -> list[tuple[str, dict[str, Any]]]:
    """Every row of a JSONL file, checked as `iter_rows` checks them."""
    return list(iter_rows(path, kind))


def count_rows(path: Path, kind: str = "chat") -> int:
    """The rows of a JSONL file, checked as `iter_rows` checks them, keeping none: memory
    stays near one line's, whatever the file's size."""
    return sum(1 for _ in iter_rows(path, kind))


def as_messages(row: dict[str, Any], kind: str) -> list[dict[str, str]]:
    """An alpaca or chat row as chat messages."""
    if kind == "chat":
        return row["messages"]
    prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]
) -> tuple[list[int], list[int]]:
    """Token ids and labels of a conversation; labels keep only the assistant replies.

    Each reply's characters are found by rendering the conversation up to it with and without
    the reply, so any prefix-stable chat template works, with or without generation markers."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(
            tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        )
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
        spans.append((start, end))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [
        token if any(s <= begin < e for s, e in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, labels


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[int]]:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    return ids, list(ids)


def encode_rows(
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[tuple[str, dict[str, Any]]],
    kind: str,
    sequence_len: int | None = None,
) -> list[Example]:
    """Tokenize rows (through a `datasets.Dataset`); rows over `sequence_len` are a DataError."""

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        payload = json.loads(row["row"])
        if kind == "text":
            ids, labels = encode_text(tokenizer, payload["text"])
        else:
            ids, labels = encode_chat(tokenizer, as_messages(payload, kind))
        return {"input_ids": ids, "labels": labels}

    table = datasets.Dataset.from_dict(
        {"line": [where for where, _ in rows], "row": [json.dumps(row) for _, row in rows]}
    )
    encoded = table.map(encode, remove_columns=["row"], keep_in_memory=True)
    examples = [
        Example(r["input_ids"], r["labels"], r["line"])
        for r in encoded
        if any(label != IGNORE_INDEX for label in r["labels"])
    ]
    too_long = [
        f"{e.line}: {len(e)} tokens, over sequence_len {sequence_len} (raise sequence_len or "
        "shorten the row)"
        for e in examples
        if sequence_len is not None and len(e) > sequence_len
    ]
    if too_long:
        raise DataError(too_long)
    return examples


@dataclass(frozen=True)
class Packed:
    """Several examples in one row; positions restart at each example, which tells the model
    (through `position_ids`) not to attend across examples."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def pack(examples: Sequence[Example], sequence_len: int) -> list[Packed]:
    """Greedily fill rows of up to `sequence_len` tokens with whole examples, in order."""
    rows: list[Packed] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in examples:
        if ids and len(ids) + len(example) > sequence_len:
            rows.append(Packed(ids, labels, positions))
            ids, labels, positions = [], [], []
        ids = ids + example.input_ids
        labels = labels + example.labels
        positions = positions + list(range(len(example)))
    if ids:
        rows.append(Packed(ids, labels, positions))
    return rows


class Collator:
    """Right-pads a batch of Examples (with an attention mask) or Packed rows (with position
    ids, whose padding is one more sequence of its own and carries no labels)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[Example | Packed]) -> dict[str, torch.Tensor]:
        width = max(len(row) for row in batch)
        input_ids = torch.full((len(batch), width), self.pad_id)
        labels = torch.full((len(batch), width), IGNORE_INDEX)
        packed = isinstance(batch[0], Packed)
        extra = torch.zeros((len(batch), width), dtype=torch.long)
        for i, row in enumerate(batch):
            n = len(row)
            input_ids[i, :n] = torch.tensor(row.input_ids)
            labels[i, :n] = torch.tensor(row.labels)
            if packed:
                extra[i, :n] = torch.tensor(row.position_ids)
                extra[i, n:] = torch.arange(width - n)
            else:
                extra[i, :n] = 1
        key = "position_ids" if packed else "attention_mask"
        return {"input_ids": input_ids, "labels": labels, key: extra}
