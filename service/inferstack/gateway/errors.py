"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

Every answer the gateway makes itself that is not a success goes through :class:`APIError`,
so clients (OpenAI SDKs, LangChain, curl) always get the same JSON and never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

log = logging.getLogger("inferstack.gateway")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answer in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type_ or _TYPES.get(status, "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> Response:
        return Response(
            self.body(),
            status_code=self.status,
            headers=self.headers,
            media_type="application/json",
        )


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    error = {"message": message, "type": type_, "param": param, "code": code}
    return orjson.dumps({"error": error})


def busy(retry_after_s: int, message: str) -> APIError:
    return APIError(429, message, code="server_busy", headers={"Retry-After": str(retry_after_s)})


def unavailable(retry_after_s: int, message: str) -> APIError:
    return APIError(
        503, message, code="no_healthy_backend", headers={"Retry-After": str(retry_after_s)}
    )


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _field_path(loc: tuple[int | str, ...]) -> str | None:
    """``messages.0.role`` from pydantic's loc, without its union-branch markers."""
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(str(p))
        elif not (p == "body" or p in _UNION_TAGS or "[" in p or "-" in p or p[:1].isupper()):
            parts.append(p)
    return ".".join(parts) or None


def from_validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """The first problem, naming its field as a dotted path (``messages.0.role``).

    A value that fits none of a union's forms yields one error per form; they are merged
    into one message for that field.
    """
    errors = exc.errors()
    if not errors:
        return APIError(400, "Invalid request.", code="invalid_value")
    paths = [_field_path(tuple(e.get("loc", ()))) for e in errors]
    # Within the first bad field, the deepest path is the most specific (a union's
    # "should be a string" at messages.0.content loses to messages.0.content.0.text).
    top = (paths[0] or "").split(".")[0]
    param = max(
        (p for p in paths if (p or "").split(".")[0] == top),
        key=lambda p: len((p or "").split(".")),
    )
    same = [e for e in errors if _field_path(tuple(e.get("loc", ()))) == param]
    msgs = list(dict.fromkeys(str(e.get("msg", "invalid value")) for e in same))
    detail = (
        msgs[0]
        if len(msgs) == 1
        else "none of the accepted forms matches (" + "; ".join(msgs[:4]) + ")"
    )
    message = f"{param}: {detail}" if param else detail
    others = {_field_path(tuple(e.get("loc", ()))) for e in errors} - {param}
    if others:
        message += f" (also invalid: {', '.join(sorted(str(o) for o in others)[:5])})"
    return APIError(400, message, param=param, code=str(errors[0].get("type", "invalid_value")))


def response_for(exc: Exception, request: Request) -> Response:
    """The OpenAI-shaped answer for any exception a handler raised."""
    if isinstance(exc, APIError):
        return exc.response()
    if isinstance(exc, RequestValidationError | ValidationError):
        return from_validation_error(exc).response()
    if isinstance(exc, StarletteHTTPException):
        status = exc.status_code
        message = {404: "Not found: no such route", 405: "Method not allowed"}.get(
            status, str(exc.detail)
        )
        return APIError(status, message, code=_TYPES.get(status), headers=exc.headers).response()
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return APIError(
        500, "Internal error; the request id is in X-Request-ID", code="internal_error"
    ).response()


def install_handlers(app: FastAPI) -> None:
    """Map every exception the framework can raise to an OpenAI-shaped answer."""

    async def handler(request: Request, exc: Exception) -> Response:
        return response_for(exc, request)

    for exc_type in (
        APIError,
        StarletteHTTPException,
        RequestValidationError,
        ValidationError,
        Exception,
    ):
        app.add_exception_handler(exc_type, handler)
