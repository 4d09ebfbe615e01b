"""Request models and response/chunk builders in the shapes vLLM's OpenAI server uses.

Requests are validated from raw bytes with one pydantic model per endpoint
(unknown fields are accepted and ignored, as vLLM does). Responses are built as
plain dicts or pre-formatted byte templates and serialised with orjson: the
streaming hot path concatenates bytes and never touches pydantic.

Shapes follow ``vllm/entrypoints/openai/protocol.py`` and the serving modules:
chat chunks are dumped with ``exclude_unset`` (only the fields vLLM sets),
completion chunks with every field, final usage chunks without ``None`` fields.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


_Req = TypeVar("_Req", bound="_Request")


class StreamOptions(_Request):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class FunctionDefinition(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolParam(_Request):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: NamedFunction


class _Sampling(_Request):
    model: str | None = None
    n: int = Field(1, ge=1)
    seed: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _Sampling:
        if self.stream_options is not None and not self.stream:
            raise ValueError("Stream options can only be defined when `stream=True`.")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[ToolParam] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    add_generation_prompt: bool = True
    logprobs: bool | None = False

    @model_validator(mode="after")
    def _check_messages(self) -> ChatRequest:
        for i, msg in enumerate(self.messages):
            if not isinstance(msg.get("role"), str):
                raise ValueError(f"messages[{i}].role must be a string")
        return self

    def max_tokens_param(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def effective_tool_choice(self) -> str | NamedToolChoice:
        """vLLM defaults tool_choice to "auto" when tools are given, else "none"."""
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        return self.tool_choice


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16  # vLLM's CompletionRequest default
    echo: bool = False
    logprobs: int | None = None

    def max_tokens_param(self) -> int | None:
        return self.max_tokens


class EmbeddingRequest(_Request):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


class TokenizeRequest(_Request):
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool | None = False
    tools: list[ToolParam] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("Exactly one of `prompt` or `messages` must be given.")
        return self


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered to the client in vLLM's shape."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        err_type: str = "BadRequestError",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.err_type = err_type
        self.param = param

    def body(self) -> bytes:
        return error_body(self.message, self.err_type, self.status, self.param)


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": err_type, "param": param, "code": code}}
    )


def validation_error(exc: ValidationError) -> ApiError:
    """A request that failed validation, reported as vLLM's FastAPI handler does."""
    details = []
    for err in exc.errors(include_url=False, include_context=False):
        item: dict[str, Any] = {
            "type": err["type"],
            "loc": ("body", *err["loc"]),
            "msg": err["msg"],
        }
        value = err.get("input")
        if not isinstance(value, dict | list | bytes):
            item["input"] = value
        details.append(item)
    return ApiError(str(details), 400, "Bad Request")


def parse(model: type[_Req], body: bytes) -> _Req:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def model_not_found(name: str | None) -> ApiError:
    return ApiError(f"The model `{name}` does not exist.", 404, "NotFoundError", "model")


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------


def random_id() -> str:
    return uuid.uuid4().hex


def usage(prompt: int, completion: int) -> dict[str, Any]:
    # Field order of vLLM's UsageInfo.
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def chat_choice(
    index: int,
    content: str | None,
    finish_reason: str,
    stop_reason: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "index": index,
        "message": {
            "role": "assistant",
            "content": content,
            "refusal": None,
            "annotations": None,
            "audio": None,
            "function_call": None,
            "tool_calls": tool_calls or [],
            "reasoning_content": None,
        },
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": stop_reason,
    }


def _response(
    obj: str,
    rid: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    prompt: int,
    completion: int,
    extra: dict[str, Any],
) -> bytes:
    return orjson.dumps(
        {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage(prompt, completion),
            **extra,
            "kv_transfer_params": None,
        }
    )


def chat_response(
    rid: str, created: int, model: str, choices: list[dict[str, Any]], prompt: int, completion: int
) -> bytes:
    return _response(
        "chat.completion",
        rid,
        created,
        model,
        choices,
        prompt,
        completion,
        {"prompt_logprobs": None},
    )


def completion_choice(
    index: int, text: str, finish_reason: str, stop_reason: str | None = None
) -> dict[str, Any]:
    return {
        "index": index,
        "text": text,
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": stop_reason,
        "prompt_logprobs": None,
    }


def completion_response(
    rid: str, created: int, model: str, choices: list[dict[str, Any]], prompt: int, completion: int
) -> bytes:
    return _response("text_completion", rid, created, model, choices, prompt, completion, {})


def models_response(model: str, root: str, max_model_len: int, created: int) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": [
                {
                    "id": model,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": root,
                    "parent": None,
                    "max_model_len": max_model_len,
                    "permission": [
                        {
                            "id": f"modelperm-{random_id()}",
                            "object": "model_permission",
                            "created": created,
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
            ],
        }
    )


def embedding_response(model: str, data: list[list[float] | str], prompt_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "id": f"embd-{random_id()}",
            "object": "list",
            "created": int(time.time()),
            "model": model,
            "data": [
                {"index": i, "object": "embedding", "embedding": vec} for i, vec in enumerate(data)
            ],
            "usage": usage(prompt_tokens, 0),
        }
    )


# ---------------------------------------------------------------------------
# Server-sent events
# ---------------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"
_NULL_FINISH = b',"logprobs":null,"finish_reason":null}]'


def _usage_bytes(prompt: int, completion: int) -> bytes:
    return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
        prompt,
        prompt + completion,
        completion,
    )


class _Chunks:
    """What every stream's events share: the event head up to ``"choices":``, and the
    usage-only tail event."""

    __slots__ = ("_head", "continuous", "prompt_tokens")

    OBJECT = b""

    def __init__(
        self, rid: str, created: int, model: str, prompt_tokens: int, continuous: bool
    ) -> None:
        self._head = (
            b'data: {"id":"'
            + rid.encode()
            + b'","object":"'
            + self.OBJECT
            + b'","created":'
            + str(created).encode()
            + b',"model":'
            + orjson.dumps(model)
            + b',"choices":'
        )
        self.prompt_tokens = prompt_tokens
        self.continuous = continuous

    def final_usage(self, completion: int) -> bytes:
        return self._head + b'[],"usage":' + _usage_bytes(self.prompt_tokens, completion) + b"}\n\n"


class ChatChunks(_Chunks):
    """Byte templates for one chat stream (``chat.completion.chunk`` events)."""

    __slots__ = ()

    OBJECT = b"chat.completion.chunk"

    def _end(self, completion: int) -> bytes:
        if self.continuous:
            return b',"usage":' + _usage_bytes(self.prompt_tokens, completion) + b"}\n\n"
        return b"}\n\n"

    def role(self, index: int) -> bytes:
        return (
            self._head
            + b'[{"index":%d,"delta":{"role":"assistant","content":""}' % index
            + _NULL_FINISH
            + self._end(0)
        )

    def content(
        self,
        index: int,
        piece_json: bytes,
        completion: int,
        finish: str | None = None,
        stop_reason: str | None = None,
    ) -> bytes:
        return (
            self._head
            + b'[{"index":%d,"delta":{"content":' % index
            + piece_json
            + b"}"
            + (_NULL_FINISH if finish is None else _finish_bytes(finish, stop_reason))
            + self._end(completion)
        )

    def tool_header(self, index: int, call_id: str, name: str, completion: int) -> bytes:
        call = {
            "index": 0,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        return (
            self._head
            + b'[{"index":%d,"delta":{"tool_calls":[' % index
            + orjson.dumps(call)
            + b"]}"
            + _NULL_FINISH
            + self._end(completion)
        )

    def tool_arguments(
        self, index: int, fragment_json: bytes, completion: int, finish: str | None = None
    ) -> bytes:
        return (
            self._head
            + b'[{"index":%d,"delta":{"tool_calls":[{"index":0,"function":{"arguments":' % index
            + fragment_json
            + b"}}]}"
            + (_NULL_FINISH if finish is None else _finish_bytes(finish, None))
            + self._end(completion)
        )


def _finish_bytes(finish: str, stop_reason: str | None) -> bytes:
    return (
        b',"logprobs":null,"finish_reason":'
        + orjson.dumps(finish)
        + b',"stop_reason":'
        + orjson.dumps(stop_reason)
        + b"}]"
    )


class CompletionChunks(_Chunks):
    """Byte templates for one completions stream (``text_completion`` events)."""

    __slots__ = ()

    OBJECT = b"text_completion"

    def content(
        self,
        index: int,
        piece_json: bytes,
        completion: int,
        finish: str | None = None,
        stop_reason: str | None = None,
    ) -> bytes:
        tail = _usage_bytes(self.prompt_tokens, completion) if self.continuous else b"null"
        return (
            self._head
            + b'[{"index":%d,"text":' % index
            + piece_json
            + b',"logprobs":null,"finish_reason":'
            + (b"null" if finish is None else orjson.dumps(finish))
            + b',"stop_reason":'
            + (b"null" if stop_reason is None else orjson.dumps(stop_reason))
            + b'}],"usage":'
            + tail
            + b"}\n\n"
        )
