"""What a demo model build is made of: data, tokenizer, model shape and training settings."""

from dataclasses import dataclass, field

from finetune.demo.skills import SKILLS


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class DemoSpec:
    """Settings of one demo model build; `FULL` and `TINY` are the presets."""

    name: str = field(metadata=_help("Preset name, recorded as a tag."))
    seed: int = field(default=0, metadata=_help("Seeds the data, initial weights and batches."))
    train_skills: tuple[str, ...] = field(
        default=("add", "upper", "lookup"), metadata=_help("Skills the base model is trained on.")
    )
    eval_skills: tuple[str, ...] = field(
        default=tuple(SKILLS), metadata=_help("Skills scored by exact match after training.")
    )
    num_train: int = field(default=4000, metadata=_help("Train rows per skill."))
    num_eval: int = field(default=100, metadata=_help("Eval rows per skill (at most)."))
    vocab_size: int = field(
        default=352, metadata=_help("BPE vocabulary size, special tokens included.")
    )
    hidden_size: int = field(default=128, metadata=_help("Model width."))
    intermediate_size: int = field(default=512, metadata=_help("MLP width."))
    num_layers: int = field(default=2, metadata=_help("Decoder layers."))
    num_heads: int = field(
        default=2, metadata=_help("Attention heads; hidden_size / num_heads must be >= 32 (vLLM).")
    )
    max_position_embeddings: int = field(default=512, metadata=_help("Longest sequence served."))
    steps: int = field(default=2000, metadata=_help("Optimizer steps."))
    batch_size: int = field(default=64, metadata=_help("Rows per step."))
    learning_rate: float = field(default=3e-3, metadata=_help("Peak AdamW learning rate."))
    warmup_steps: int = field(default=100, metadata=_help("Linear warmup before the cosine decay."))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay."))
    eval_batch_size: int = field(default=128, metadata=_help("Prompts per generate call."))
    max_new_tokens: int = field(default=12, metadata=_help("Longest generated answer in eval."))
    log_every: int = field(default=100, metadata=_help("Steps between progress log lines."))
    torch_threads: int = field(
        default=2, metadata=_help("Torch CPU threads; fixed so that builds are reproducible.")
    )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.train_skills + self.eval_skills) - set(SKILLS))
        if unknown:
            raise ValueError(f"unknown skills {unknown}; choose from {sorted(SKILLS)}")
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads < 32:
            raise ValueError(
                f"hidden_size {self.hidden_size} / num_heads {self.num_heads} must be a whole "
                "head dim of at least 32 for vLLM to serve the model"
            )


FULL = DemoSpec(name="full")
TINY = DemoSpec(
    name="tiny",
    num_train=64,
    num_eval=8,
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_layers=1,
    steps=4,
    batch_size=16,
    warmup_steps=1,
    eval_batch_size=64,
    max_new_tokens=4,
    log_every=2,
)
