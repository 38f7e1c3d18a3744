import json
import tracemalloc
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.data import (
    IGNORE_INDEX,
    Collator,
    DataError,
    count_rows,
    encode_rows,
    pack,
    read_rows,
)
from tests.finetune.conftest import write_lines

CHAT = json.dumps(
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "reverse: abc"},
            {"role": "assistant", "content": "cba"},
            {"role": "user", "content": "reverse: xy"},
            {"role": "assistant", "content": "yx"},
        ]
    }
)


@pytest.fixture(scope="module")
def tokenizer(base_model_dir: Path):
    return AutoTokenizer.from_pretrained(base_model_dir)


def test_counting_rows_keeps_memory_bounded_whatever_the_file_size(tmp_path: Path) -> None:
    """An upload is checked by streaming: the peak stays a small fraction of the file (keeping
    the rows took about 10 times the file), and bad rows are still found at the end."""
    path = tmp_path / "train.jsonl"
    with path.open("w") as out:
        for _ in range(20_000):
            out.write(CHAT + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        rows = count_rows(path, "chat")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == 20_000
    assert size > 4 * 2**20 and peak < size // 50, (size, peak)
    with path.open("a") as out:
        out.write("{oops\n")
    with pytest.raises(DataError, match=r"train\.jsonl:20001: not JSON"):
        count_rows(path, "chat")


def test_bad_rows_are_reported_by_line(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "train.jsonl",
        [
            CHAT,
            "{not json",
            '{"messages": []}',
            '{"messages": [{"role": "bot", "content": "hi"}]}',
            '{"messages": [{"role": "user", "content": "hi"}]}',
            "",
            '["a list"]',
            CHAT,
        ],
    )
    with pytest.raises(DataError) as caught:
        read_rows(path, "chat")
    assert caught.value.problems == [
        "train.jsonl:2: not JSON (Expecting property name enclosed in double quotes)",
        "train.jsonl:3: `messages` is missing or empty",
        "train.jsonl:4: messages[0] has unknown role 'bot'; use one of system, user, "
        "assistant, tool",
        "train.jsonl:5: no assistant message to learn from",
        "train.jsonl:6: empty line",
        "train.jsonl:7: expected a JSON object",
    ]
    assert str(caught.value).startswith("6 bad rows: train.jsonl:2: not JSON")


@pytest.mark.parametrize(
    ("kind", "line", "problem"),
    [
        ("alpaca", '{"instruction": "", "output": "x"}', "`instruction` is missing or empty"),
        ("alpaca", '{"instruction": "x", "input": 3, "output": "y"}', "`input` must be a string"),
        ("text", '{"content": "x"}', "`text` is missing or empty"),
    ],
)
def test_alpaca_and_text_rows_are_checked(tmp_path: Path, kind: str, line: str, problem: str):
    with pytest.raises(DataError, match=f"train.jsonl:1: {problem}"):
        read_rows(write_lines(tmp_path / "train.jsonl", [line]), kind)


def test_checking_a_file_stops_after_a_bounded_number_of_bad_rows(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", ["{oops"] * 100_000)
    with pytest.raises(DataError, match=r"checking stopped at line 101") as caught:
        read_rows(path)
    assert len(caught.value.problems) == 100


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_rows(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="no rows"):
        read_rows(write_lines(tmp_path / "empty.jsonl", []))


def _trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_loss_covers_only_the_assistant_replies(tmp_path: Path, tokenizer) -> None:
    rows = read_rows(write_lines(tmp_path / "train.jsonl", [CHAT]), "chat")
    [example] = encode_rows(tokenizer, rows, "chat")
    trained = _trained_text(tokenizer, example)
    assert "cba" in trained and "yx" in trained
    assert "reverse" not in trained and "be brief" not in trained
    assert example.line == "train.jsonl:1"


def test_alpaca_becomes_a_chat_and_text_trains_on_everything(tmp_path: Path, tokenizer) -> None:
    alpaca = write_lines(
        tmp_path / "a.jsonl", ['{"instruction": "reverse", "input": "abc", "output": "cba"}']
    )
    [example] = encode_rows(tokenizer, read_rows(alpaca, "alpaca"), "alpaca")
    assert _trained_text(tokenizer, example).startswith("cba")
    assert "reverse" in tokenizer.decode(example.input_ids)

    text = write_lines(tmp_path / "t.jsonl", ['{"text": "plain words"}'])
    [example] = encode_rows(tokenizer, read_rows(text, "text"), "text")
    assert example.labels == example.input_ids


def test_rows_over_sequence_len_are_errors_by_line(tmp_path: Path, tokenizer) -> None:
    rows = read_rows(write_lines(tmp_path / "train.jsonl", [CHAT, CHAT]), "chat")
    with pytest.raises(DataError, match=r"train.jsonl:1: \d+ tokens, over sequence_len 8"):
        encode_rows(tokenizer, rows, "chat", sequence_len=8)


def test_packing_fills_rows_and_keeps_examples_apart(
    skills_dir: Path, tokenizer, base_model_dir: Path
) -> None:
    rows = read_rows(skills_dir / "reverse" / "train.jsonl", "chat")[:12]
    examples = encode_rows(tokenizer, rows, "chat")
    packed = pack(examples, sequence_len=64)
    assert len(packed) < len(examples)
    assert all(len(row) <= 64 for row in packed)
    assert sum(len(row) for row in packed) == sum(len(e) for e in examples)
    assert [t for row in packed for t in row.input_ids] == [
        t for e in examples for t in e.input_ids
    ]

    # A packed row gives each example the logits it gets alone: no attention across examples.
    model = AutoModelForCausalLM.from_pretrained(base_model_dir).eval()
    model.config.use_cache = False  # as finetune.trainer.load_model sets it for training
    collate = Collator(tokenizer.pad_token_id)
    with torch.no_grad():
        together = model(**{k: v for k, v in collate(packed[:2]).items() if k != "labels"})
        first_row = packed[0]
        start = 0
        for example in examples:
            if start + len(example) > len(first_row):
                break
            alone = model(**{k: v for k, v in collate([example]).items() if k != "labels"})
            torch.testing.assert_close(
                together.logits[0, start : start + len(example)],
                alone.logits[0, : len(example)],
                atol=1e-5,
                rtol=1e-4,
            )
            start += len(example)
    assert start == len(first_row)
