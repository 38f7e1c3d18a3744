"""The distillation loss: a temperature-scaled KL divergence from the teacher's next-token
distribution, mixed with the usual cross-entropy on the labels (Hinton et al., 2015), both on
the tokens that carry labels (assistant replies)."""

from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, Trainer

from finetune.data import IGNORE_INDEX


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mixed loss, KL term, cross-entropy) averaged over the labelled next-token positions.

    The KL term is KL(teacher_T || student_T) * T^2, so that its gradients keep their size
    whatever the temperature."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    student = student_logits[:, :-1][mask].float()
    teacher = teacher_logits[:, :-1][mask].float()
    cross_entropy = F.cross_entropy(student, targets[mask])
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    ) * (temperature**2)
    return alpha * kl + (1 - alpha) * cross_entropy, kl, cross_entropy


class DistillationTrainer(Trainer):
    """A `Trainer` whose loss is `distillation_loss` against a frozen teacher."""

    def __init__(
        self, *args: Any, teacher: PreTrainedModel, temperature: float, alpha: float, **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.alpha = alpha

    def compute_loss(
        self,
        model: PreTrainedModel,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        labels = inputs["labels"]
        features = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**features)
        self.teacher.to(outputs.logits.device)
        with torch.no_grad():
            teacher_logits = self.teacher(**features).logits
        loss, _, _ = distillation_loss(
            outputs.logits, teacher_logits, labels, self.temperature, self.alpha
        )
        return (loss, outputs) if return_outputs else loss
