"""Registry settings, read from the environment (`LLMOPS_*`). Where state lives and who acts
are the stack's settings (`core.settings.StackSettings`)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_")

    promotion_gate: str | None = Field(
        default=None,
        description="The gate every promotion must pass: 'metric:NAME' (candidate's metric "
        "must not be below the champion's) or 'package.module:callable' returning a Gate.",
    )
