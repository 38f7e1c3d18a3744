import dataclasses
import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.digests import file_digest
from finetune.demo.build import build_demo_model
from finetune.demo.evaluation import exact_match_rate
from finetune.demo.skills import SKILLS, read_jsonl
from finetune.demo.spec import TINY, DemoSpec


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_demo_model(root / "model", TINY, data_dir=root / "data")


def test_tiny_build_is_reproducible(tiny_build, tmp_path):
    again = build_demo_model(tmp_path / "model", TINY)
    assert _hashes(again.output_dir) == _hashes(tiny_build.output_dir)
    assert again.metrics == tiny_build.metrics
    assert again.dataset_digests == tiny_build.dataset_digests


def test_tiny_build_is_a_standard_hf_directory(tiny_build):
    names = {p.name for p in tiny_build.output_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert not any(name.endswith((".bin", ".pt")) for name in names)


def test_tiny_build_loads_and_generates(tiny_build):
    model = AutoModelForCausalLM.from_pretrained(tiny_build.output_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_build.output_dir)
    assert model.config.head_dim >= 32
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    inputs = tokenizer.apply_chat_template(
        [[{"role": "user", "content": "What is 1 + 2?"}]],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]
    assert sum(p.numel() for p in model.parameters()) == tiny_build.num_parameters
    assert model.dtype == torch.float32


def test_tiny_build_reports_metrics_and_data_digests(tiny_build):
    assert set(tiny_build.metrics) == {f"exact_match/{name}" for name in SKILLS}
    data = tiny_build.output_dir.parent / "data"
    # Each reported score is the saved model's exact match on that skill's held-out rows.
    model = AutoModelForCausalLM.from_pretrained(tiny_build.output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_build.output_dir)
    for name in SKILLS:
        rows = read_jsonl(data / name / "eval.jsonl")
        rate = exact_match_rate(model, tokenizer, rows, TINY.eval_batch_size, TINY.max_new_tokens)
        assert tiny_build.metrics[f"exact_match/{name}"] == rate
    assert tiny_build.dataset_digests == tuple(
        file_digest(data / name / "train.jsonl") for name in TINY.train_skills
    )
    assert tiny_build.tags["trained_skills"] == "add,upper,lookup"


def test_build_refuses_a_non_empty_output(tmp_path):
    (tmp_path / "stale.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        build_demo_model(tmp_path, TINY)


def test_spec_refuses_head_dim_below_32():
    with pytest.raises(ValueError, match="at least 32"):
        dataclasses.replace(TINY, hidden_size=64, num_heads=4)


def test_spec_refuses_unknown_skills():
    with pytest.raises(ValueError, match="unknown skills"):
        DemoSpec(name="x", train_skills=("juggle",))
