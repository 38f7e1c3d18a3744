"""Stack-wide settings from the environment (`LLMOPS_*`): where state lives, which database
holds it, and who this process acts as. Each package adds its own settings beside these."""

import getpass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The configs that come with the stack (suites, gates, accelerate configs), wherever the
# process was started from.
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_")

    home: Path = Field(
        default=Path("~/.llmops"),
        description="Where all state lives: the database, artifacts, caches, jobs, files.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the stack's database; SQLite under `home` when unset. "
        "Example: postgresql+psycopg://user@127.0.0.1:5432/llmops",
    )
    actor: str = Field(
        default_factory=getpass.getuser,
        description="Who is recorded in the audit log for changes made by this process.",
    )

    @property
    def resolved_home(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_home / 'registry.db'}"

    def ensure_home(self) -> Path:
        """The home folder, created readable by its owner only (it holds the database, keys'
        hashes, uploaded data and weights)."""
        home = self.resolved_home
        if not home.exists():
            home.mkdir(mode=0o700, parents=True)
        return home

    @property
    def models_cache(self) -> Path:
        """Verified local copies of registry versions, one folder per artifact digest."""
        return self.resolved_home / "cache" / "models"

    @property
    def jobs_dir(self) -> Path:
        """Job working folders: checkpoints, logs, results."""
        return self.resolved_home / "jobs"

    @property
    def files_dir(self) -> Path:
        """Files uploaded through the API."""
        return self.resolved_home / "files"

    @property
    def logs_dir(self) -> Path:
        """Logs of processes the stack supervises (vLLM servers)."""
        return self.resolved_home / "logs"

    def environment(self) -> dict[str, str]:
        """These settings as the variables that give a child process the same ones."""
        return {
            "LLMOPS_HOME": str(self.resolved_home),
            "LLMOPS_DATABASE_URL": self.resolved_database_url,
            "LLMOPS_ACTOR": self.actor,
        }
