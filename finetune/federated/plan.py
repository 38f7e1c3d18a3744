"""What travels with the work, besides tensors: the plan of one round the coordinator sends
to each silo (settings only, no data), and the coordinator's plan of a whole run that the
job writes into its folder for the ServerApp."""

import json
from pathlib import Path

from pydantic import BaseModel

from finetune.federated.config import FederatedConfig, LoraSettings, TrainingSettings

PLAN_FILE = "federation.json"


class RoundPlan(BaseModel):
    """The round's instructions to a silo (in the Flower train message's config)."""

    round: int
    base_model: str
    lora: LoraSettings
    training: TrainingSettings
    proximal_mu: float = 0.0


class CoordinatorPlan(BaseModel):
    """The job's instructions to its ServerApp: the config, and the base it resolved."""

    job_id: str
    config: FederatedConfig
    base_ref: str  # the registry reference silos fetch
    base_dir: str  # the base's files on the coordinator (for the initial adapter)

    def write(self, job_dir: Path) -> Path:
        path = job_dir / PLAN_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=1))
        return path

    @classmethod
    def read(cls, job_dir: Path) -> "CoordinatorPlan":
        return cls.model_validate_json((job_dir / PLAN_FILE).read_text())
