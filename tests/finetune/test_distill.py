"""Distillation (`method: distill`) and pruning (`method: prune`) jobs through `llm-finetune`,
on a tiny teacher with clear-cut next-token choices, registered with their lineage."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.digests import file_digest
from core.settings import StackSettings
from finetune.cli import main
from finetune.data import Collator, encode_rows, read_rows
from finetune.demo.evaluation import generate_replies
from finetune.demo.random_model import build_random_model
from finetune.distill.loss import distillation_loss
from finetune.distill.recipe import StudentSpec, TrafficPrompts
from finetune.distill.student import build_student
from finetune.distill.traffic import teacher_rows, traffic_prompts
from finetune.errors import RecipeError
from finetune.export.onnx import export_onnx
from finetune.prune.recipe import PruningSpec
from finetune.prune.structured import prune_model
from registry.entities import VersionKind
from registry.service import open_registry


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 layers, hidden 64, 2 heads, MLP 256; a wide initialisation makes its next-token
    distributions peaked, so that a student can be seen to learn them."""
    return build_random_model(tmp_path_factory.mktemp("teacher") / "model", initializer_range=0.3)


@pytest.fixture
def cli(tmp_path: Path, teacher_dir: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "home"
    registry = open_registry(StackSettings(home=home, actor="tests"))
    registry.register("teacher", teacher_dir)
    registry.set_alias("teacher", "production", 1)
    monkeypatch.setenv("LLMOPS_HOME", str(home))
    monkeypatch.delenv("LLMOPS_DATABASE_URL", raising=False)
    return main, registry


def write(path: Path, **keys) -> Path:
    path.write_text(yaml.safe_dump(keys))
    return path


def distill_recipe(skills_dir: Path, **keys) -> dict:
    return {
        "method": "distill",
        "teacher_model": "teacher",
        "student": {"num_layers": 1, "hidden_size": 32, "num_heads": 1, "intermediate_size": 64},
        "kd_temperature": 1.0,
        "kd_alpha": 1.0,
        "datasets": [{"path": str(skills_dir / "add" / "train.jsonl")}],
        "sequence_len": 64,
        "micro_batch_size": 16,
        "max_steps": 40,
        "learning_rate": 1e-2,
        "warmup_ratio": 0.0,
        **keys,
    }


def kl_to_teacher(student, teacher, batch) -> float:
    """Mean KL(teacher || student) over the batch's labelled positions."""
    with torch.no_grad():
        _loss, kl, _ = distillation_loss(
            student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            batch["labels"],
            temperature=1.0,
            alpha=1.0,
        )
    return kl.item()


def test_the_loss_mixes_kl_and_cross_entropy_as_alpha_says() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, 3, 4, -100, 1], [-100, -100, 2, 7, 9]])
    _, kl, ce = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.5)
    mask = labels[:, 1:] != -100
    s, t = student[:, :-1][mask], teacher[:, :-1][mask]
    expected_kl = F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))
    assert kl.item() == pytest.approx(expected_kl.sum(-1).mean().item() * 4, rel=1e-5)
    assert ce.item() == pytest.approx(F.cross_entropy(s, labels[:, 1:][mask]).item(), rel=1e-5)
    assert distillation_loss(student, teacher, labels, 2.0, 1.0)[0].item() == pytest.approx(
        kl.item()
    )
    assert distillation_loss(student, teacher, labels, 2.0, 0.0)[0].item() == pytest.approx(
        ce.item()
    )
    assert distillation_loss(teacher, teacher, labels, 3.0, 1.0)[0].item() == pytest.approx(
        0.0, abs=1e-6
    )


@pytest.mark.slow
def test_a_distilled_student_learns_the_teachers_distribution_and_is_registered(
    cli, teacher_dir: Path, skills_dir: Path, tmp_path: Path, capsys
) -> None:
    main, registry = cli
    shape = {"num_layers": 1, "hidden_size": 32, "num_heads": 1, "intermediate_size": 64}
    keys = distill_recipe(skills_dir, student={**shape, "max_position_embeddings": 96})
    recipe = write(tmp_path / "distill.yaml", **keys)
    assert main(["--json", "run", str(recipe), "--suffix", "small"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["status"] == "succeeded", job

    version = registry.resolve(job["registered_version"])
    assert version.ref == "teacher-small:1" and version.kind is VersionKind.DISTILLED
    assert version.parent == "teacher:1" and version.tags["teacher"] == "teacher:1"
    assert version.tags["kd_alpha"] == "1.0" and version.recipe_digest
    assert version.dataset_digests == (file_digest(skills_dir / "add" / "train.jsonl"),)
    assert version.metrics["num_parameters"] < 0.25 * version.metrics["teacher_num_parameters"]

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(registry.local_copy(version)).eval()
    assert student.config.max_position_embeddings == 96  # the teacher's is 256
    assert AutoTokenizer.from_pretrained(registry.local_copy(version)).vocab == tokenizer.vocab
    untrained = build_student(teacher, StudentSpec(**shape), 0).eval()
    rows = read_rows(skills_dir / "add" / "eval.jsonl")
    batch = Collator(tokenizer.pad_token_id)(encode_rows(tokenizer, rows, "chat"))
    # Pure KL (alpha 1) on rows whose answers the random teacher does not give: the student
    # moved toward the teacher's distribution, not the labels.
    assert kl_to_teacher(student, teacher, batch) < 0.5 * kl_to_teacher(untrained, teacher, batch)
    assert generate_replies(student, tokenizer, [[{"role": "user", "content": "hi"}]], 1, 4)

    # A student is a plain Hugging Face model: the ONNX export takes it as it is (int8 of the
    # demo student: scripts/bench_edge.py).
    exported, parity = export_onnx(registry, version.ref, "fp32", prompts=["What is 1 + 2?"])
    assert exported.parent == version.ref and exported.kind is VersionKind.DISTILLED
    assert parity.prompts == 1 and parity.token_agreement >= 0.99


@pytest.mark.slow
def test_pruning_removes_the_configured_structure_and_the_model_still_generates(
    cli, skills_dir: Path, tmp_path: Path, capsys
) -> None:
    main, registry = cli
    recipe = write(
        tmp_path / "prune.yaml",
        method="prune",
        base_model="teacher",
        pruning={"mlp_ratio": 0.5, "heads_ratio": 0.5, "drop_layers": [0]},
        datasets=[{"path": str(skills_dir / "add" / "train.jsonl")}],
        sequence_len=64,
        micro_batch_size=8,
        max_steps=3,
    )
    assert main(["--json", "run", str(recipe)]) == 0
    job = json.loads(capsys.readouterr().out)
    version = registry.resolve(job["registered_version"])
    assert version.ref == "teacher-pruned:1" and version.kind is VersionKind.PRUNED
    assert version.parent == "teacher:1"

    model_dir = registry.local_copy(version)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads) == (1, 1)
    assert (config.intermediate_size, config.hidden_size) == (128, 64)
    vocab, hidden = config.vocab_size, 64
    # Embeddings and head (untied), the final norm; one layer of 1 head of 32, MLP 128.
    expected = 2 * vocab * hidden + hidden + (4 * hidden * 32 + 3 * hidden * 128 + 2 * hidden)
    before = 2 * vocab * hidden + hidden + 2 * (4 * hidden * hidden + 3 * hidden * 256 + 2 * hidden)
    assert version.metrics["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert (version.metrics["num_parameters"], version.metrics["num_parameters_before"]) == (
        expected,
        before,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    [reply] = generate_replies(model, tokenizer, [[{"role": "user", "content": "hi"}]], 1, 4)
    assert isinstance(reply, str)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"teacher_model": "nobody"}, "teacher_model 'nobody' is neither a folder nor a regist"),
        (
            {"student": {"num_layers": 4, "hidden_size": 128}},
            "is not smaller than the teacher's",
        ),
        ({"kd_temprature": 2.0}, "unknown key 'kd_temprature'; did you mean 'kd_temperature'?"),
        ({"student": {"hidden": 8}}, "unknown key in student: 'hidden'"),
        ({"kd_alpha": 1.5}, "kd_alpha: Input should be less than or equal to 1"),
        ({"method": "distil"}, "method: 'distil' is unknown"),
        (
            {"student": {"init": "teacher", "hidden_size": 32}},
            "init: teacher copies the teacher's layers, so hidden_size must stay",
        ),
    ],
)
def test_bad_distillation_recipes_fail_in_one_line_and_nothing_runs(
    cli, skills_dir: Path, tmp_path: Path, capsys, keys: dict, message: str
) -> None:
    main, registry = cli
    recipe = write(tmp_path / "r.yaml", **distill_recipe(skills_dir, **keys))
    assert main(["run", str(recipe)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("llm-finetune: error: ") and message in line
    assert main(["--json", "list"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert [v.ref for v in registry.list_versions()] == ["teacher:1"]


@pytest.mark.parametrize(
    ("pruning", "message"),
    [
        ({"mlp_ratio": 1.5}, "pruning.mlp_ratio: Input should be less than 1"),
        ({"heads_ratio": -0.1}, "pruning.heads_ratio: Input should be greater than or equal"),
        ({"drop_layers": [0, 1]}, "pruning.drop_layers: at least one layer must stay"),
        ({"drop_layers": [5]}, "the model has layers 0 to 1, not [5]"),
        ({}, "nothing to prune"),
        ({"mlp_ratoi": 0.5}, "did you mean 'mlp_ratio'?"),
    ],
)
def test_bad_pruning_recipes_fail_in_one_line(
    cli, skills_dir: Path, tmp_path: Path, capsys, pruning: dict, message: str
) -> None:
    main, registry = cli
    recipe = write(
        tmp_path / "r.yaml",
        method="prune",
        base_model="teacher",
        pruning=pruning,
        datasets=[{"path": str(skills_dir / "add" / "train.jsonl")}],
        max_steps=1,
    )
    assert main(["submit", str(recipe)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("llm-finetune: error: ") and message in line
    assert [v.ref for v in registry.list_versions()] == ["teacher:1"]


def _kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    return torch.cdist(pruned, original).argmin(dim=1)


def test_pruned_heads_and_channels_compute_what_the_rest_of_the_model_did(
    teacher_dir: Path,
) -> None:
    """Pruning removes whole heads and channels: the pruned model's logits are the original's
    with the removed heads' and channels' outputs zeroed."""
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    reference = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    prune_model(model, PruningSpec(mlp_ratio=0.25, heads_ratio=0.5))
    assert model.config.intermediate_size == 192 and model.config.num_attention_heads == 1
    with torch.no_grad():
        for layer, original in zip(model.model.layers, reference.model.layers, strict=True):
            heads = _kept_rows(original.self_attn.q_proj.weight, layer.self_attn.q_proj.weight)
            gone = torch.ones(64, dtype=torch.bool)
            gone[heads] = False
            original.self_attn.o_proj.weight[:, gone] = 0
            channels = _kept_rows(original.mlp.up_proj.weight, layer.mlp.up_proj.weight)
            gone = torch.ones(256, dtype=torch.bool)
            gone[channels] = False
            original.mlp.down_proj.weight[:, gone] = 0
        ids = torch.randint(0, model.config.vocab_size, (2, 12))
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, atol=1e-4, rtol=1e-4)


def test_traffic_prompts_come_from_the_gateways_log_and_get_the_teachers_answers(
    tmp_path: Path, teacher_dir: Path
) -> None:
    from sqlalchemy import insert

    from core.database import open_database
    from serving.tables import CHAIN, traffic

    url = f"sqlite:///{tmp_path / 'stack.db'}"
    spec = TrafficPrompts(model="teacher", limit=5, max_new_tokens=3)
    with pytest.raises(RecipeError, match="no traffic log"):
        traffic_prompts(url, spec, None)
    engine = open_database(url, CHAIN)
    asked = [{"role": "user", "content": "What is 2 + 2?"}]
    common = {
        "created_at": datetime.now(UTC),
        "request_id": "r",
        "version": "teacher:1",
        "backend": "local",
        "prompt": "",
        "output": "4",
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "latency_ms": 1,
    }
    with engine.begin() as conn:
        conn.execute(
            insert(traffic),
            [
                {**common, "model": "teacher", "endpoint": "chat", "messages": asked},
                {**common, "model": "other", "endpoint": "chat", "messages": asked},
                {**common, "model": "teacher", "endpoint": "completions", "messages": None},
            ],
        )
    assert traffic_prompts(url, spec, None) == [asked]
    with pytest.raises(RecipeError, match="no chat requests to 'x'"):
        traffic_prompts(url, spec.model_copy(update={"model": "x"}), None)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    [(where, row)] = teacher_rows(teacher, tokenizer, [asked], 3)
    assert where == "traffic:1" and row["messages"][:1] == asked
    assert row["messages"][1]["role"] == "assistant" and row["messages"][1]["content"]
