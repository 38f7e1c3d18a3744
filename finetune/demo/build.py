"""Build the demo base model (data, tokenizer, training, evaluation, save) and register it."""

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from core.digests import file_digest
from finetune.data import encode_rows
from finetune.demo.evaluation import exact_match_rate
from finetune.demo.skills import SKILLS, read_jsonl, write_skill_splits
from finetune.demo.spec import DemoSpec
from finetune.demo.tokenizer import train_demo_tokenizer
from finetune.demo.training import train

if TYPE_CHECKING:
    from registry.entities import ModelVersion
    from registry.service import Registry

log = logging.getLogger(__name__)

SOURCE = "scripts/build_demo_model.py"


@dataclass(frozen=True)
class DemoBuild:
    """A finished build: where it is, how it scores and what it was trained on."""

    output_dir: Path
    spec: DemoSpec
    metrics: dict[str, float]  # "exact_match/<skill>" for each eval skill
    dataset_digests: tuple[str, ...]  # sha256 of each train file used, in train_skills order
    num_parameters: int
    final_loss: float
    seconds: float

    @property
    def tags(self) -> dict[str, str]:
        return {
            "spec": self.spec.name,
            "seed": str(self.spec.seed),
            "trained_skills": ",".join(self.spec.train_skills),
            "num_parameters": str(self.num_parameters),
        }


@contextlib.contextmanager
def _deterministic_torch(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def demo_model_config(spec: DemoSpec, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """The Llama shape of the demo model, float32."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        dtype="float32",
    )


def build_demo_model(output_dir: Path, spec: DemoSpec, data_dir: Path | None = None) -> DemoBuild:
    """Train the demo model described by `spec` and save it as a Hugging Face directory.

    The skills data goes to `data_dir` (a temporary folder when None). The same spec on the
    same machine gives byte-identical files in `output_dir`, which must be empty or absent.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} is not empty; choose a new output folder")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(_deterministic_torch(spec.torch_threads))
        skills = [s for s in SKILLS if s in spec.train_skills or s in spec.eval_skills]
        files = write_skill_splits(data_dir, spec.seed, spec.num_train, spec.num_eval, skills)
        train_rows = {s: read_jsonl(files[s].train) for s in skills}

        tokenizer = train_demo_tokenizer(
            (m["content"] for rows in train_rows.values() for row in rows for m in row["messages"]),
            spec.vocab_size,
        )
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(demo_model_config(spec, tokenizer))
        num_parameters = sum(p.numel() for p in model.parameters())
        log.info("demo model: %d parameters, vocab %d", num_parameters, len(tokenizer))

        rows = [
            (f"{skill}/train.jsonl:{i}", row)
            for skill in spec.train_skills
            for i, row in enumerate(train_rows[skill], start=1)
        ]
        examples = encode_rows(tokenizer, rows, "chat")
        final_loss = train(model, examples, tokenizer.pad_token_id, spec)

        metrics = {}
        for skill in spec.eval_skills:
            rows = read_jsonl(files[skill].eval)
            rate = exact_match_rate(
                model, tokenizer, rows, spec.eval_batch_size, spec.max_new_tokens
            )
            metrics[f"exact_match/{skill}"] = rate
            log.info("exact match %-8s %.3f (%d eval rows)", skill, rate, len(rows))

        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(output_dir)
        tokenizer.save_pretrained(output_dir)
        digests = tuple(file_digest(files[s].train) for s in spec.train_skills)
    return DemoBuild(
        output_dir=output_dir,
        spec=spec,
        metrics=metrics,
        dataset_digests=digests,
        num_parameters=num_parameters,
        final_loss=final_loss,
        seconds=time.monotonic() - started,
    )


def register_demo_model(
    registry: "Registry", build: DemoBuild, name: str = "demo", alias: str = "production"
) -> "ModelVersion":
    """Register `build` as a base version of `name` and point `alias` at it."""
    version = registry.register(
        name,
        build.output_dir,
        kind="base",
        format="hf-safetensors",
        metrics=build.metrics,
        tags=build.tags,
        source=SOURCE,
        dataset_digests=list(build.dataset_digests),
        recipe_digest=None,
    )
    registry.set_alias(
        name, alias, version.version, reason=f"demo model built ({build.spec.name} spec)"
    )
    return version
