"""The silo: a Flower `ClientApp` on a SuperNode. Each round it trains the global adapter
further on the silo's own rows with the stack's trainer (`finetune.trainer.train`) and
returns only the adapter's tensors, its example count and a few numbers (silo id, data
digest, loss); the rows and their token ids never leave the machine.

The SuperNode's node config names the silo (`silo-id`), its data folder (`data`, holding
`train.jsonl`), optionally a local base model folder (`base`) and LoRA settings its operator
pinned (`lora`, JSON); without `base` the base is fetched from the silo's own registry."""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message, MessageType
from flwr.client import NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import TrainerCallback

from core.digests import file_digest
from core.settings import StackSettings
from finetune.data import read_rows
from finetune.errors import RecipeError
from finetune.federated.adapter import adapter_keys
from finetune.federated.config import LoraSettings, lora_mismatch
from finetune.federated.plan import RoundPlan
from finetune.recipe import Recipe, parse_recipe
from finetune.trainer import train
from registry.service import open_registry

TRAIN_FILE = "train.jsonl"


class StartFromGlobal(TrainerCallback):
    """Loads the global adapter into the fresh LoRA layers before the first step, and, with
    FedProx's `mu`, adds mu * (w - w_global) to each adapter gradient before each update."""

    def __init__(self, tensors: list[np.ndarray], proximal_mu: float):
        self.tensors = tensors
        self.proximal_mu = proximal_mu
        self._anchor: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        own = get_peft_model_state_dict(model)
        keys = adapter_keys(own)
        shapes = [tuple(own[k].shape) for k in keys]
        if shapes != [tuple(t.shape) for t in self.tensors]:
            raise RecipeError(
                f"the coordinator's adapter has {len(self.tensors)} tensors of other shapes "
                f"than this silo's {len(keys)}: the LoRA settings differ"
            )
        state_dict = {
            k: torch.from_numpy(np.array(t)) for k, t in zip(keys, self.tensors, strict=True)
        }
        set_peft_model_state_dict(model, state_dict)
        if self.proximal_mu > 0:
            self._anchor = [(p, p.detach().clone()) for p in model.parameters() if p.requires_grad]

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for parameter, anchor in self._anchor:
            if parameter.grad is not None:
                parameter.grad.add_(parameter.detach() - anchor, alpha=self.proximal_mu)


def silo_recipe(plan: RoundPlan, base_model: str, data_file: Path) -> Recipe:
    """The stack's recipe for one round of local training."""
    training = plan.training
    return parse_recipe(
        {
            "base_model": base_model,
            **plan.lora.model_dump(),
            "datasets": [{"path": str(data_file), "type": "chat"}],
            "sequence_len": training.sequence_len,
            "micro_batch_size": training.micro_batch_size,
            "learning_rate": training.learning_rate,
            "lr_scheduler": training.lr_scheduler,
            "warmup_ratio": 0.0,
            "max_steps": training.local_steps,
            "save_steps": training.local_steps + 1,  # no checkpoints: a round is short
            "seed": training.seed + plan.round,
        },
        "federated round",
    )


class Silo(NumPyClient):
    def __init__(self, node_config: dict[str, Any]):
        self.silo_id = str(node_config.get("silo-id") or "silo")
        self.data = Path(str(node_config["data"])).expanduser()
        self.base = str(node_config.get("base") or "")
        pinned = node_config.get("lora")
        self.pinned = LoraSettings.model_validate_json(str(pinned)) if pinned else None
        self.stack = StackSettings()
        self.work_dir = self.stack.resolved_home / "federated" / "silos" / self.silo_id

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        plan = RoundPlan.model_validate_json(str(config["plan"]))
        if self.pinned is not None and self.pinned != plan.lora:
            raise RecipeError(lora_mismatch(self.silo_id, self.pinned, plan.lora))
        data_file = self.data / TRAIN_FILE
        rows = read_rows(data_file, "chat")
        registry = None if self.base else open_registry(self.stack)
        recipe = silo_recipe(plan, self.base or plan.base_model, data_file)
        result = train(
            recipe,
            self.work_dir / f"round-{plan.round}",
            registry=registry,
            callbacks=[StartFromGlobal(parameters, plan.proximal_mu)],
            progress=False,
        )
        tensors = load_file(result.adapter_dir / "adapter_model.safetensors")
        arrays = [tensors[key].numpy() for key in adapter_keys(tensors)]
        metrics = {
            "silo_id": self.silo_id,
            "data_digest": file_digest(data_file),
            "train_loss": float(result.metrics["train_loss"]),
        }
        return arrays, len(rows), metrics


def _secagg_when_asked(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's SecAgg+ protocol, where the coordinator runs it (its configs are present)."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _clip_when_asked(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's client-side clipping for DP, where the coordinator's DP wrapper asks for it."""
    if msg.metadata.message_type == MessageType.TRAIN:
        fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        if KEY_CLIPPING_NORM in fit_ins.config:
            return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _client_fn(context: Context) -> Any:
    return Silo(dict(context.node_config)).to_client()


# SecAgg+ masks what the clipping mod returns, so the clipping runs inside it.
app = ClientApp(client_fn=_client_fn, mods=[_secagg_when_asked, _clip_when_asked])
