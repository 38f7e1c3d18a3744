"""Registry settings, read from the environment (`LLMOPS_*`)."""

import getpass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_")

    home: Path = Field(
        default=Path("~/.llmops"),
        description="Where all state lives: the registry database, artifacts, jobs, traffic.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the registry database; SQLite under `home` when unset. "
        "Example: postgresql+psycopg://user@127.0.0.1:5432/llmops",
    )
    actor: str = Field(
        default_factory=getpass.getuser,
        description="Who is recorded in the audit log for changes made by this process.",
    )
    promotion_gate: str | None = Field(
        default=None,
        description="The gate every promotion must pass: 'metric:NAME' (candidate's metric "
        "must not be below the champion's) or 'package.module:callable' returning a Gate.",
    )

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_home / 'registry.db'}"
