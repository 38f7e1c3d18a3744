"""Federated fine-tuning configs: YAML files in `configs/federated/`, validated into a typed
`FederatedConfig` (an unknown key names the nearest valid one)."""

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.configs import load_yaml_config
from core.errors import StackError
from finetune.errors import RecipeError

SILO_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Strict):
    """The adapter every silo trains; all silos of a federation must agree on it."""

    lora_r: int = Field(8, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(16, gt=0, description="LoRA scaling numerator (alpha / r).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt, or all-linear."
    )


class StrategySettings(_Strict):
    name: Literal["fedavg", "fedprox", "fedadam"] = Field(
        "fedavg",
        description="fedavg: mean of the silos' adapters weighted by their example counts; "
        "fedprox: the same, silos penalised by proximal_mu for drifting from the global "
        "adapter; fedadam: the mean update applied by a server-side Adam.",
    )
    proximal_mu: float = Field(0.01, ge=0.0, description="FedProx's proximal term weight.")
    server_learning_rate: float = Field(
        0.1, gt=0.0, description="FedAdam's server learning rate (eta)."
    )
    fraction_silos: float = Field(
        1.0, gt=0.0, le=1.0, description="Share of the available silos sampled each round."
    )
    min_silos: int = Field(
        2, gt=0, description="Fewest silos whose results make a round (and to sample)."
    )
    min_available_silos: int = Field(
        2, gt=0, description="Silos that must be connected before a round starts."
    )
    round_timeout_s: float = Field(
        600.0, gt=0.0, description="How long a round waits for its silos' results."
    )
    max_update_norm: float = Field(
        50.0,
        gt=0.0,
        description="The coordinator clips each silo's update (its adapter minus the global "
        "one) to this L2 norm, whatever the silo did (with differential privacy, to "
        "clipping_norm where that is smaller). Under secure aggregation it clips the mean.",
    )
    max_weight_ratio: float = Field(
        4.0,
        ge=1.0,
        description="A silo's weight in the mean is its reported example count, capped at "
        "this multiple of the round's lower median count, so that no silo takes over the "
        "round by claiming more examples (not applied under secure aggregation, where "
        "counts are masked).",
    )


class DifferentialPrivacy(_Strict):
    """Central DP with client-side clipping: each silo clips its update to clipping_norm,
    the coordinator adds Gaussian noise of std noise_multiplier * clipping_norm / silos to
    the mean; epsilon is tracked by Opacus's RDP accountant."""

    enabled: bool = Field(False, description="Clip and noise the adapter updates.")
    clipping_norm: float = Field(1.0, gt=0.0, description="L2 bound of one silo's update.")
    noise_multiplier: float = Field(1.0, ge=0.0, description="Noise std / clipping_norm.")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="The delta of (epsilon, delta)-DP.")


class SecureAggregation(_Strict):
    """Flower's SecAgg+: the coordinator learns only the sum of the silos' (quantized)
    updates, never one silo's."""

    enabled: bool = Field(False, description="Aggregate with SecAgg+.")
    num_shares: int = Field(
        3, gt=2, description="Shares each silo's secret is split into (Flower needs 3 or more)."
    )
    reconstruction_threshold: int = Field(
        2, gt=1, description="Shares needed to unmask a silo that dropped out."
    )
    clipping_range: float = Field(
        8.0, gt=0.0, description="Adapter values are clipped to +-this before quantizing."
    )
    quantization_range: int = Field(
        2**22, gt=0, description="Integer range the clipped values are quantized into."
    )


class Privacy(_Strict):
    differential_privacy: DifferentialPrivacy = Field(
        default_factory=DifferentialPrivacy, description="Clipping plus noise (DP)."
    )
    secure_aggregation: SecureAggregation = Field(
        default_factory=SecureAggregation, description="SecAgg+ masking."
    )


class TrainingSettings(_Strict):
    """What each silo does with its data in a round (through the stack's trainer)."""

    local_steps: int = Field(20, gt=0, description="Optimizer steps per silo per round.")
    micro_batch_size: int = Field(16, gt=0, description="Rows per step.")
    learning_rate: float = Field(2e-3, gt=0.0, description="Silo learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "constant", description="Schedule within one round's local steps."
    )
    sequence_len: int = Field(64, gt=0, description="Longer rows are reported, not truncated.")
    seed: int = Field(0, description="Seeds the initial adapter and the silos' data order.")


class SiloSpec(_Strict):
    """A silo of a local run (`llm-finetune federated run`): its id and data folder."""

    id: str = Field(pattern=SILO_ID_PATTERN, description="Silo id.")
    data: str = Field(description="Folder holding train.jsonl (chat rows); it never leaves.")
    lora: LoraSettings | None = Field(
        None,
        description="LoRA settings this silo's operator pinned; a silo refuses to train "
        "an adapter with other settings.",
    )


class Transport(_Strict):
    """Where the SuperLink listens and how it is secured."""

    host: str = Field("127.0.0.1", description="Address the SuperLink binds.")
    fleet_port: int = Field(9092, gt=0, lt=65536, description="Fleet API port (silos).")
    serverapp_port: int = Field(9091, gt=0, lt=65536, description="ServerAppIo API port.")
    control_port: int = Field(9093, gt=0, lt=65536, description="Control API port (runs).")
    certificates: str | None = Field(
        None,
        description="Folder with ca.crt, server.pem and server.key: TLS on every API "
        "(server.pem must name both the host silos reach and 127.0.0.1, where the Control "
        "API listens). Without it the SuperLink runs --insecure, which only a loopback host "
        "may do.",
    )
    authorized_silo_keys: str | None = Field(
        None,
        description="YAML file listing the silos' ECDSA public keys (node authentication): "
        "only SuperNodes holding a listed key may join.",
    )
    signing_key: str | None = Field(
        None,
        description="The coordinator's Ed25519 private key (OpenSSH format) that signs the "
        "Flower App it starts; silos run only apps signed by a key in their "
        "--trusted-entities. Required by serve; a local run makes one for the job.",
    )

    @model_validator(mode="after")
    def _secure_off_loopback(self) -> "Transport":
        if self.certificates is None and not _loopback(self.host):
            raise ValueError(
                f"transport.host {self.host} is reachable from other machines, and without "
                "transport.certificates the SuperLink would run --insecure there: set "
                "transport.certificates (a folder with ca.crt, server.pem, server.key) or "
                "bind 127.0.0.1"
            )
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other machines may resolve


class FederatedConfig(_Strict):
    base_model: str = Field(description="Registry reference of the base (demo, demo:2).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="The adapter.")
    training: TrainingSettings = Field(
        default_factory=TrainingSettings, description="Local training per round."
    )
    rounds: int = Field(5, gt=0, le=1000, description="Federated rounds.")
    strategy: StrategySettings = Field(
        default_factory=StrategySettings, description="Aggregation and silo sampling."
    )
    privacy: Privacy = Field(default_factory=Privacy, description="DP and secure aggregation.")
    transport: Transport = Field(default_factory=Transport, description="SuperLink network.")
    silos: list[SiloSpec] = Field(
        default_factory=list, description="Silos a local run starts (ignored by serve)."
    )
    register_as: str | None = Field(
        None, description="Registry model name of the result (default <base>-federated)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> "FederatedConfig":
        if self.strategy.min_silos > self.strategy.min_available_silos:
            raise ValueError("strategy.min_silos cannot exceed strategy.min_available_silos")
        secagg = self.privacy.secure_aggregation
        if secagg.enabled and secagg.reconstruction_threshold > secagg.num_shares:
            raise ValueError("secure_aggregation.reconstruction_threshold exceeds num_shares")
        ids = [silo.id for silo in self.silos]
        if len(set(ids)) != len(ids):
            raise ValueError("silos: every silo needs its own id")
        return self

    def check_silos(self) -> None:
        """A local run's silos: enough of them, and LoRA settings they agree on."""
        if len(self.silos) < self.strategy.min_available_silos:
            raise RecipeError(
                f"silos: a local run needs at least strategy.min_available_silos "
                f"({self.strategy.min_available_silos}) silos, the config lists "
                f"{len(self.silos)}",
                param="silos",
            )
        for silo in self.silos:
            if silo.lora is not None and silo.lora != self.lora:
                raise RecipeError(lora_mismatch(silo.id, silo.lora, self.lora), param="silos")


def lora_mismatch(silo: str, pinned: LoraSettings, wanted: LoraSettings) -> str:
    differing = [
        f"{key} {getattr(pinned, key)!r} (coordinator: {getattr(wanted, key)!r})"
        for key in LoraSettings.model_fields
        if getattr(pinned, key) != getattr(wanted, key)
    ]
    return (
        f"silo {silo} pins different LoRA settings: {', '.join(differing)}; every silo of a "
        "federation trains the same adapter"
    )


def load_federated_config(path: Path) -> FederatedConfig:
    """`path` validated; RecipeError names the first wrong key (and the nearest valid one)."""
    try:
        return load_yaml_config(Path(path), FederatedConfig, "federated config")
    except StackError as err:
        raise RecipeError(err.message) from None
