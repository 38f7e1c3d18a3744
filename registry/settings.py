"""Registry settings, read from the environment (`LLMOPS_*`). Where state lives and who acts
are the stack's settings (`core.settings.StackSettings`)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_")

    import_root: str | None = Field(
        default=None,
        description="A server folder whose subfolders may be registered over HTTP by path "
        "(`source_dir`); unset, HTTP clients upload a tar archive instead.",
    )
    max_upload_bytes: int = Field(
        default=20 * 1024**3, gt=0, description="Largest version archive accepted over HTTP."
    )
    promotion_gate: str | None = Field(
        default=None,
        description="The gate every promotion must pass: 'metric:NAME' (candidate's metric "
        "must not be below the champion's) or 'package.module:callable' returning a Gate.",
    )
