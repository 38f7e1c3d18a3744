"""`POST /v1/feedback` and `GET /v1/feedback`: request and response models. Not an OpenAI
API; shaped as OpenAI objects are (`id`, `object`, `created_at`)."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, model_validator

REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"


class FeedbackRequest(BaseModel):
    # An optional field may be left out but is never null.
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"anyOf": [{"required": ["rating"]}, {"required": ["correction"]}]},
    )

    request_id: Annotated[str, Field(pattern=REQUEST_ID_PATTERN)] = Field(
        description="The `x-request-id` header of the answer the feedback is about."
    )
    rating: Annotated[int, Field(ge=1, le=5)] = Field(  # type: ignore
        None, description="1 (bad) to 5 (good)."
    )
    correction: Annotated[StrictStr, Field(min_length=1, max_length=16_384)] = Field(  # type: ignore
        None, description="The answer the model should have given."
    )

    @model_validator(mode="after")
    def _something(self) -> "FeedbackRequest":
        if self.rating is None and self.correction is None:
            raise ValueError("give a `rating`, a `correction`, or both")
        return self


class FeedbackObject(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    created_at: int
    request_id: str
    model: str = Field(description="The version that answered, e.g. `demo:3`.")
    rating: int | None
    correction: str | None
    teach: bool = Field(
        description="Extra: whether this feedback's correction may train models (the key that "
        "gave it has the teach scope)."
    )
    review: Literal["pending", "approved", "rejected"] = Field(
        description="Extra: an admin's review of the correction; loops that ask for review "
        "train only on approved ones."
    )
