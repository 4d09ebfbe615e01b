"""OpenAI request models the gateway validates, straight from the raw body bytes.

Only what the gateway must understand is typed; everything else (vLLM's sampling extras such as
``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``, ``guided_*``, ``structured_outputs``,
``chat_template_kwargs``, ``logprobs`` ...) is allowed and forwarded byte for byte.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

NonNegFloat = Annotated[float, Field(ge=0)]


class _Open(BaseModel):
    """Typed fields are checked; unknown fields pass through to the engine."""

    model_config = ConfigDict(extra="allow", strict=False, allow_inf_nan=False)


class StreamOptions(_Open):
    include_usage: StrictBool | None = None
    continuous_usage_stats: StrictBool | None = None


class ContentPart(_Open):
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: StrictStr | None = None

    def text_length(self) -> int:
        if isinstance(self.content, str):
            return len(self.content)
        if self.content is None:
            return 0
        return sum(len(p.text or "") for p in self.content)


class FunctionDef(_Open):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionDef


class _Generation(_Open):
    """Fields shared by chat and text completions."""

    model: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=128)] = 1
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: StrictStr | None = None

    @field_validator("stream_options")
    @classmethod
    def _only_when_streaming(cls, v: StreamOptions | None, info: ValidationInfo) -> object:
        if v is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed when stream is true")
        return v


class ChatCompletionRequest(_Generation):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1)] | None = None
    tools: list[Tool] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None

    def prompt_chars(self) -> int:
        return sum(m.text_length() for m in self.messages)

    def output_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: (
        Annotated[StrictStr, Field(min_length=0)]
        | Annotated[list[StrictStr], Field(min_length=1)]
        | Annotated[list[StrictInt], Field(min_length=1)]
        | Annotated[list[list[StrictInt]], Field(min_length=1)]
    )

    def prompt_chars(self) -> int:
        p = self.prompt
        if isinstance(p, str):
            return len(p)
        return sum(len(x) if isinstance(x, str | list) else 1 for x in p)

    def output_budget(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(_Open):
    model: Annotated[StrictStr, Field(min_length=1, max_length=256)]
    input: (
        StrictStr
        | Annotated[list[StrictStr], Field(min_length=1)]
        | Annotated[list[StrictInt], Field(min_length=1)]
        | Annotated[list[list[StrictInt]], Field(min_length=1)]
    )
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[StrictInt, Field(ge=1)] | None = None
    user: StrictStr | None = None

    def prompt_chars(self) -> int:
        i = self.input
        if isinstance(i, str):
            return len(i)
        return sum(len(x) if isinstance(x, str | list) else 1 for x in i)


GenerationRequest = ChatCompletionRequest | CompletionRequest
