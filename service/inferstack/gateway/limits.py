"""Input limits beyond the protocol's types: body size, message count, prompt size, budget."""

from __future__ import annotations

from starlette.requests import Request

from inferstack.gateway.errors import APIError
from inferstack.gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from inferstack.gateway.settings import GatewaySettings


def _too_large(limit: int) -> APIError:
    return APIError(
        413, f"Request body exceeds the limit of {limit} bytes.", code="request_too_large"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing anything over ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise APIError(400, "Invalid Content-Length header.", code="invalid_header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def check_limits(
    req: ChatCompletionRequest | CompletionRequest | EmbeddingRequest, settings: GatewaySettings
) -> None:
    if isinstance(req, ChatCompletionRequest) and len(req.messages) > settings.max_messages:
        raise APIError(
            400,
            f"messages: at most {settings.max_messages} messages are accepted "
            f"(got {len(req.messages)}).",
            param="messages",
            code="too_many_messages",
        )
    chars = req.prompt_chars()
    if chars > settings.max_prompt_chars:
        param = {ChatCompletionRequest: "messages", CompletionRequest: "prompt"}.get(
            type(req), "input"
        )
        raise APIError(
            400,
            f"{param}: the prompt has {chars} characters, over the limit of "
            f"{settings.max_prompt_chars}.",
            param=param,
            code="prompt_too_long",
        )
    if isinstance(req, ChatCompletionRequest | CompletionRequest):
        budget = req.output_budget()
        if budget is not None and budget > settings.max_tokens_ceiling:
            param = (
                "max_completion_tokens"
                if isinstance(req, ChatCompletionRequest) and req.max_completion_tokens
                else "max_tokens"
            )
            raise APIError(
                400,
                f"{param}: at most {settings.max_tokens_ceiling} tokens may be "
                f"requested (got {budget}).",
                param=param,
                code="max_tokens_too_large",
            )
