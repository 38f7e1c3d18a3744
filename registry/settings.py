"""Registry settings, read from the environment (`LLMOPS_*`). Where state lives and who acts
are the stack's settings (`core.settings.StackSettings`)."""

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024**3
UNPACKED_PER_UPLOAD = 4  # the default unpacked limit, in upload limits


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMOPS_")

    import_root: str | None = Field(
        default=None,
        description="A server folder whose subfolders may be registered over HTTP by path "
        "(`source_dir`); unset, HTTP clients upload a tar archive instead.",
    )
    max_upload_bytes: int = Field(
        default=DEFAULT_MAX_UPLOAD_BYTES,
        gt=0,
        description="Largest version archive accepted over HTTP.",
    )
    max_unpacked_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Largest total size of the files an uploaded archive may unpack to (a "
        "compressed archive can unpack to far more than it weighs); unset, "
        f"{UNPACKED_PER_UPLOAD} times max_upload_bytes.",
    )
    trust_remote_code: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models (names, comma-separated) whose versions may carry code that "
        "transformers runs when it loads them (`auto_map`, Python files), loaded with "
        "trust_remote_code=True; none by default. Native libraries are refused for every model.",
    )
    two_person_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Aliases (comma-separated, e.g. 'production') that move only when a second "
        "admin approves a promotion request; setting, deleting, rolling back or promoting one "
        "directly needs a break-glass reason, recorded in the audit log. None by default.",
    )
    promotion_gate: str | None = Field(
        default=None,
        description="The gate every promotion must pass: 'metric:NAME' (candidate's metric "
        "must not be below the champion's) or 'package.module:callable' returning a Gate.",
    )

    @field_validator("trust_remote_code", "two_person_aliases", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @property
    def unpacked_limit(self) -> int:
        return self.max_unpacked_bytes or UNPACKED_PER_UPLOAD * self.max_upload_bytes
