"""`llm-finetune clean` on data written the way people write it: copies, near copies, broken
lines, leaked evaluation questions and personal data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from core.redaction import redact_pii
from finetune.clean import CleanConfig, clean_rows
from finetune.data import DataError
from finetune.recipe import parse_recipe
from finetune.trainer import load_training_data


def chat(question: str, answer: str) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
    )


LINES = [
    chat("How do I reset my router?", "Hold the reset button for ten seconds."),
    chat("How do I reset my router?", "Hold the reset button for ten seconds."),  # copy
    chat("How do I reset my router ?", "Hold the reset button for ten seconds!"),  # same words
    chat("How do I reset my router, please?", "Hold the reset button for ten seconds."),
    chat("How do I reset my modem after a power cut?", "Unplug it, wait a minute, plug it in."),
    "{not json",
    "",
    json.dumps({"messages": [{"role": "user", "content": "hi"}]}),  # nothing to learn
    chat("Write to me", ""),  # an empty turn
    chat("Summarise: " + "lorem ipsum " * 400, "A long text."),
    chat("What is the capital of Peru?", "Lima."),  # an evaluation question
    chat(
        "Translate this please: the quick brown fox jumps over the lazy dog today",
        "Der schnelle braune Fuchs.",
    ),  # shares eight words with an evaluation prompt
    chat("Email me at ana.lopez@example.org or call 0612 345 678 90", "Sure."),
]
EVALUATION = [
    "what is the capital of peru",
    "Say in German: the quick brown fox jumps over the lazy dog today, quickly",
]


def test_each_kind_of_bad_row_is_removed_with_its_reason() -> None:
    config = CleanConfig(max_chars=2000, redactor=redact_pii)
    rows, report = clean_rows(LINES, "chat", config, EVALUATION)
    assert report.kept == len(rows) == 3
    removed = {reason: len(lines) for reason, lines in report.removed.items()}
    assert removed == {
        "exact duplicate": 2,
        "near duplicate": 1,
        "malformed": 4,
        "too long": 1,
        "overlaps evaluation data": 2,
    }
    assert report.removed["near duplicate"] == ["line 4: of line 1"]
    assert any("not JSON" in line for line in report.removed["malformed"])
    assert any("a turn is empty" in line for line in report.removed["malformed"])
    assert rows[2][1]["messages"][0]["content"] == "Email me at [EMAIL] or call [NUMBER]"
    assert report.masked == 1
    questions = [r["messages"][0]["content"] for _, r in rows]
    assert questions[:2] == [
        "How do I reset my router?",
        "How do I reset my modem after a power cut?",
    ]


def test_different_rows_that_look_alike_are_kept() -> None:
    lines = [chat(f"What is {a} + {b}?", str(a + b)) for a in range(10, 20) for b in range(3)]
    _, report = clean_rows(lines, "chat", CleanConfig())
    assert report.kept == len(lines) and not report.removed


def test_the_command_writes_the_file_and_its_report(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(LINES) + "\n")
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(chat("What is the capital of Peru?", "Lima") + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "finetune", "clean", str(data), "--against", str(evaluation)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "kept 5 rows" in done.stdout  # the long row and the translation stay here
    cleaned = data.with_suffix(".clean.jsonl")
    assert len(cleaned.read_text().splitlines()) == 5
    report = json.loads(cleaned.with_suffix(".report.json").read_text())
    assert report["removed"]["overlaps evaluation data"] == 1
    missing = subprocess.run(
        [sys.executable, "-m", "finetune", "clean", str(tmp_path / "nope.jsonl")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_a_recipe_with_clean_trains_on_the_cleaned_rows(
    tmp_path: Path, base_model_dir: Path
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(LINES) + "\n")
    evaluation = tmp_path / "eval.jsonl"
    evaluation.write_text(chat("What is the capital of Peru?", "Lima") + "\n")
    recipe = {
        "base_model": str(base_model_dir),
        "max_steps": 1,
        "datasets": [{"path": str(data)}, {"path": str(evaluation), "split": "validation"}],
    }
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    with pytest.raises(DataError, match="not JSON"):  # as written, the file cannot train
        load_training_data(parse_recipe(recipe), tokenizer, tmp_path / "job")
    cleaned = parse_recipe({**recipe, "clean": True})
    train, validation, _ = load_training_data(cleaned, tokenizer, tmp_path / "job")
    assert (len(train), len(validation)) == (4, 1)
    texts = [tokenizer.decode(example.input_ids) for example in train]
    assert not any("capital of Peru" in text or "ana.lopez" in text for text in texts)
    (report_file,) = (tmp_path / "job").glob("clean-*.report.json")
    report = json.loads(report_file.read_text())
    assert report["kept"] == 4 and report["masked"] == 1
    assert report["removed"]["overlaps evaluation data"] == 1
    assert report["removed"]["over sequence_len"] == 1  # tokens, which the recipe sets
