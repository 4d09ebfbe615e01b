"""The simulator's ASGI application: vLLM's OpenAI server routes over the engine.

A plain ASGI callable (no framework): request bodies are validated from bytes,
responses are orjson bytes or pre-formatted SSE templates, so the per-request and
per-chunk CPU cost stays small. Every generation request watches its connection;
when the client goes away the engine aborts the request at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from inferstack.sim.engine import Engine, make_engine
from inferstack.sim.metrics import CONTENT_TYPE, SimMetrics
from inferstack.sim.plan import Choice, ToolSpec, plan_choice
from inferstack.sim.profiles import CostModel, Profile
from inferstack.sim.protocol import (
    DONE,
    ApiError,
    ChatChunks,
    ChatRequest,
    CompletionChunks,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    NamedToolChoice,
    TokenizeRequest,
    chat_choice,
    chat_response,
    completion_choice,
    completion_response,
    embedding_response,
    error_body,
    model_not_found,
    models_response,
    parse,
    random_id,
    tool_call,
)
from inferstack.sim.settings import SimSettings
from inferstack.sim.tokens import (
    Tokenizer,
    embedding,
    embedding_base64,
    mix64,
    render_chat,
    stable_hash,
    unit_interval,
)

log = logging.getLogger("inferstack.sim")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]
MAX_CHOICES = 128


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            return None
        chunks.append(msg.get("body", b""))
        if not msg.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_bytes(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = JSON_HEADERS
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


class SimApp:
    """ASGI application of one simulated vLLM engine."""

    def __init__(self, settings: SimSettings, profile: Profile) -> None:
        self.settings = settings
        self.profile = profile
        self.model_name = profile.served_model_name
        self.max_model_len = profile.engine.max_model_len
        vocab = profile.model.vocab_size if profile.model is not None else 128256
        self.tokenizer = Tokenizer(vocab)
        self.metrics = SimMetrics(profile, num_gpu_blocks=CostModel(profile).num_blocks())
        self.engine: Engine = make_engine(profile, self.metrics)
        self.started_at = time.monotonic()
        self.ready_at = self.started_at + settings.startup_delay_ms / 1e3
        self.generation_requests = 0
        self.routes: dict[str, tuple[tuple[str, ...], Handler]] = {
            "/v1/chat/completions": (("POST",), self.chat),
            "/v1/completions": (("POST",), self.completions),
            "/v1/embeddings": (("POST",), self.embeddings),
            "/v1/models": (("GET",), self.models),
            "/health": (("GET",), self.health),
            "/ping": (("GET", "POST"), self.health),
            "/tokenize": (("POST",), self.tokenize),
            "/detokenize": (("POST",), self.detokenize),
            "/version": (("GET",), self.version),
            "/metrics": (("GET",), self.metrics_endpoint),
        }

    # -- ASGI -----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            route = self.routes.get(scope["path"])
            if route is None:
                await _send_bytes(send, 404, b'{"detail":"Not Found"}')
                return
            methods, handler = route
            if scope["method"] not in methods:
                await _send_bytes(send, 405, b'{"detail":"Method Not Allowed"}')
                return
            try:
                await handler(scope, receive, send)
            except ApiError as exc:
                await _send_bytes(send, exc.status, exc.body())
            except Exception:
                log.exception("unhandled error in %s %s", scope["method"], scope["path"])
                with contextlib.suppress(Exception):
                    body = error_body("Internal server error", "InternalServerError", 500)
                    await _send_bytes(send, 500, body)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await self.engine.start()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.engine.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- gates ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return time.monotonic() >= self.ready_at

    def _check_ready(self) -> None:
        if not self.ready:
            raise ApiError("The engine is still loading.", 503, "ServiceUnavailableError")

    def _count_generation(self) -> int:
        """Count a generation request; crash the process if told to."""
        self.generation_requests += 1
        n = self.generation_requests
        limit = self.settings.crash_after
        if limit is not None and n > limit:
            log.critical("crash-after %d: generation request %d arrived, exiting", limit, n)
            logging.shutdown()
            os._exit(1)
        return n

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise model_not_found(name)

    def _inject_error(self, n: int) -> None:
        rate = self.settings.error_rate
        if rate > 0 and unit_interval(self.settings.seed, "error", n) < rate:
            raise ApiError("Internal server error", 500, "InternalServerError")

    def _stall(self, target: int) -> tuple[int, float]:
        """(token after which to stall, seconds) for the current request, or (-1, 0)."""
        rate = self.settings.stall_rate
        n = self.generation_requests
        if rate > 0 and target > 1 and unit_interval(self.settings.seed, "stall", n) < rate:
            return target // 2 - 1 if target > 2 else 0, self.settings.stall_ms / 1e3
        return -1, 0.0

    def _plan(
        self,
        index: int,
        seed: int,
        prompt_tokens: int,
        max_tokens: int,
        body: ChatRequest | CompletionRequest,
        tool: ToolSpec | None = None,
    ) -> Choice:
        return plan_choice(
            index=index,
            seed=seed,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            max_tokens_param=body.max_tokens_param(),
            n=body.n,
            ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens,
            stops=body.stop_list(),
            tool=tool,
            tokenizer=self.tokenizer,
            stall=self._stall,
        )

    def _max_tokens(self, prompt_tokens: int, param: int | None, min_tokens: int) -> int:
        limit = self.max_model_len
        if prompt_tokens >= limit:
            raise ApiError(
                f"This model's maximum context length is {limit} tokens. However, your "
                f"request has {prompt_tokens} input tokens. Please reduce the length of "
                "the input messages.",
                param="input_tokens",
            )
        if param is None:
            max_tokens = limit - prompt_tokens
        else:
            if param < 1:
                raise ApiError(f"max_tokens must be at least 1, got {param}.", param="max_tokens")
            if prompt_tokens + param > limit:
                raise ApiError(
                    f"'max_tokens' or 'max_completion_tokens' is too large: {param}. This "
                    f"model's maximum context length is {limit} tokens and your request has "
                    f"{prompt_tokens} input tokens ({param} > {limit} - {prompt_tokens}).",
                    param="max_tokens",
                )
            max_tokens = param
        if min_tokens > max_tokens:
            raise ApiError(
                f"min_tokens must be less than or equal to max_tokens={max_tokens}, "
                f"got {min_tokens}.",
                param="min_tokens",
            )
        return max_tokens

    def _seed(self, body: ChatRequest | CompletionRequest, key: object) -> int:
        request_seed = body.seed if body.seed is not None else "-"
        return stable_hash(self.settings.seed, request_seed, key)

    # -- generation plumbing ------------------------------------------------------

    def _watch(self, receive: Receive, choices: list[Choice]) -> asyncio.Task[None]:
        engine = self.engine

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    for c in choices:
                        engine.abort(c.req)
                    return

        return asyncio.get_running_loop().create_task(watch())

    def _submit(self, choices: list[Choice]) -> None:
        for c in choices:
            self.engine.submit(c.req)

    def _abort_all(self, choices: list[Choice]) -> None:
        for c in choices:
            if not c.req.done:
                self.engine.abort(c.req)

    async def _wait_all(self, choices: list[Choice]) -> bool:
        """Wait for every choice to finish; False when any was aborted."""
        engine = self.engine
        for c in choices:
            await engine.wait_done(c.req)
        return not any(c.req.aborted for c in choices)

    def _chunk(self, chunks: ChatChunks | CompletionChunks, c: Choice, k: int, last: bool) -> bytes:
        req = c.req
        finish = req.finish_reason if last else None
        tool = c.tool
        if isinstance(chunks, ChatChunks):
            if tool is not None:
                if k == 0:
                    body = chunks.tool_header(c.index, tool.call_id, tool.name, 1)
                    if last:  # truncated to one token: close the stream on the header
                        body += chunks.tool_arguments(c.index, b'""', 1, finish)
                else:
                    fragment = orjson.dumps(tool.fragments[k - 1])
                    body = chunks.tool_arguments(c.index, fragment, k + 1, finish)
            else:
                stop = c.stop_reason if last else None
                body = chunks.content(c.index, c.piece_json(k), k + 1, finish, stop)
            if k == 0:
                body = chunks.role(c.index) + body
            return body
        stop = c.stop_reason if last else None
        return chunks.content(c.index, c.piece_json(k), k + 1, finish, stop)

    async def _stream(
        self,
        send: Send,
        choices: list[Choice],
        chunks: ChatChunks | CompletionChunks,
        include_usage: bool,
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        engine = self.engine
        if len(choices) == 1:
            c = choices[0]
            req = c.req
            last = req.target - 1
            while True:
                k = await engine.next_token(req)
                if k < 0:
                    return  # aborted: the client is gone
                body = self._chunk(chunks, c, k, k == last)
                if k == last:
                    break
                await send({"type": "http.response.body", "body": body, "more_body": True})
        else:
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()

            async def pump(c: Choice) -> None:
                last = c.req.target - 1
                try:
                    while (k := await engine.next_token(c.req)) >= 0:
                        queue.put_nowait(self._chunk(chunks, c, k, k == last))
                finally:
                    queue.put_nowait(None)

            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(pump(c)) for c in choices]
            try:
                remaining = len(tasks)
                while remaining:
                    item = await queue.get()
                    if item is None:
                        remaining -= 1
                        continue
                    await send({"type": "http.response.body", "body": item, "more_body": True})
            finally:
                for t in tasks:
                    t.cancel()
            if any(c.req.aborted for c in choices):
                return
            body = b""
        completion = sum(c.req.num_output for c in choices)
        if include_usage:
            body += chunks.final_usage(completion)
        await send({"type": "http.response.body", "body": body + DONE, "more_body": False})

    async def _generate(
        self,
        receive: Receive,
        send: Send,
        choices: list[Choice],
        stream: bool,
        make_chunks: Callable[[], ChatChunks | CompletionChunks],
        include_usage: bool,
        respond: Callable[[list[Choice]], bytes],
    ) -> None:
        self._submit(choices)
        watcher: asyncio.Task[None] | None = None
        try:
            if stream:
                watcher = self._watch(receive, choices)
                await self._stream(send, choices, make_chunks(), include_usage)
                return
            if not all(self.engine.completes_now(c.req) for c in choices):
                watcher = self._watch(receive, choices)
            if await self._wait_all(choices):
                await _send_bytes(send, 200, respond(choices))
        finally:
            if watcher is not None:
                watcher.cancel()
            self._abort_all(choices)

    @staticmethod
    def _usage_flags(body: ChatRequest | CompletionRequest) -> tuple[bool, bool]:
        opts = body.stream_options
        if opts is None:
            return False, False
        include = bool(opts.include_usage)
        return include, include and bool(opts.continuous_usage_stats)

    # -- endpoints --------------------------------------------------------------

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        if raw is None:
            return
        self._check_ready()
        n = self._count_generation()
        body = parse(ChatRequest, raw)
        self._check_model(body.model)
        if body.n > MAX_CHOICES:
            raise ApiError(f"n must be at most {MAX_CHOICES}, got {body.n}.", param="n")
        tool = self._select_tool(body)
        tool_dicts = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
        prompt = render_chat(body.messages, tool_dicts, body.add_generation_prompt)
        prompt_tokens = self.tokenizer.count(prompt)
        param = body.max_tokens_param()
        max_tokens = self._max_tokens(prompt_tokens, param, body.min_tokens)
        self._inject_error(n)
        seed = self._seed(body, prompt)
        choices = [
            self._plan(i, mix64(seed + i), prompt_tokens, max_tokens, body, tool)
            for i in range(body.n)
        ]
        rid = f"chatcmpl-{random_id()}"
        created = int(time.time())
        include_usage, continuous = self._usage_flags(body)
        model = self.model_name

        def respond(done: list[Choice]) -> bytes:
            out = []
            for c in done:
                if c.tool is not None and c.req.finish_reason == "tool_calls":
                    call = tool_call(c.tool.call_id, c.tool.name, c.tool.arguments)
                    out.append(chat_choice(c.index, None, "tool_calls", None, [call]))
                elif c.tool is not None:  # truncated call: the raw text, like a failed parse
                    text = "".join(c.tool.fragments[: max(0, c.req.num_output - 1)])
                    out.append(chat_choice(c.index, text, c.req.finish_reason))
                else:
                    out.append(
                        chat_choice(c.index, c.full_text(), c.req.finish_reason, c.stop_reason)
                    )
            completion = sum(c.req.num_output for c in done)
            return chat_response(rid, created, model, out, prompt_tokens, completion)

        await self._generate(
            receive,
            send,
            choices,
            bool(body.stream),
            lambda: ChatChunks(rid, created, model, prompt_tokens, continuous),
            include_usage,
            respond,
        )

    def _select_tool(self, body: ChatRequest) -> ToolSpec | None:
        choice = body.effective_tool_choice()
        tools = body.tools or []
        if choice == "none":
            return None
        if not tools:
            raise ApiError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
        if isinstance(choice, NamedToolChoice):
            for t in tools:
                if t.function.name == choice.function.name:
                    return t.function.name, t.function.parameters
            raise ApiError(
                f"Tool '{choice.function.name}' has not been passed in `tools`.",
                param="tool_choice",
            )
        return tools[0].function.name, tools[0].function.parameters

    async def completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        if raw is None:
            return
        self._check_ready()
        n = self._count_generation()
        body = parse(CompletionRequest, raw)
        self._check_model(body.model)
        prompts = self._prompts(body.prompt)
        if body.n * len(prompts) > MAX_CHOICES:
            raise ApiError(
                f"n x prompts must be at most {MAX_CHOICES}, got {body.n * len(prompts)}.",
                param="n",
            )
        param = body.max_tokens_param()
        lengths: list[int] = []
        limits: list[int] = []
        for p in prompts:
            count = len(p) if isinstance(p, list) else self.tokenizer.count(p) + 1  # + BOS
            limits.append(self._max_tokens(count, param, body.min_tokens))
            lengths.append(count)
        self._inject_error(n)
        choices: list[Choice] = []
        for p_index, p in enumerate(prompts):
            count, max_tokens = lengths[p_index], limits[p_index]
            key: object = tuple(p) if isinstance(p, list) else p
            seed = self._seed(body, key)
            for j in range(body.n):
                index = p_index * body.n + j
                choices.append(self._plan(index, mix64(seed + j), count, max_tokens, body))
        prompt_tokens = sum(lengths)
        rid = f"cmpl-{random_id()}"
        created = int(time.time())
        include_usage, continuous = self._usage_flags(body)
        model = self.model_name

        def respond(done: list[Choice]) -> bytes:
            out = [
                completion_choice(c.index, c.full_text(), c.req.finish_reason, c.stop_reason)
                for c in done
            ]
            completion = sum(c.req.num_output for c in done)
            return completion_response(rid, created, model, out, prompt_tokens, completion)

        await self._generate(
            receive,
            send,
            choices,
            bool(body.stream),
            lambda: CompletionChunks(rid, created, model, prompt_tokens, continuous),
            include_usage,
            respond,
        )

    @staticmethod
    def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[Any]:
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise ApiError("Prompt cannot be empty.", param="prompt")
        if isinstance(prompt[0], int):
            return [prompt]
        out: list[Any] = list(prompt)
        if any(isinstance(p, list) and not p for p in out):
            raise ApiError("Prompt cannot be empty.", param="prompt")
        return out

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        if raw is None:
            return
        self._check_ready()
        body = parse(EmbeddingRequest, raw)
        self._check_model(body.model)
        dim = self.profile.embedding_dim
        if body.dimensions is not None and body.dimensions != dim:
            raise ApiError(
                "Model does not support matryoshka representation, changing output "
                "dimensions will lead to poor results.",
                param="dimensions",
            )
        inputs = self._prompts(body.input)
        keys: list[str] = []
        total = 0
        for item in inputs:
            if isinstance(item, list):
                count, key = len(item), "ids:" + ",".join(map(str, item))
            else:
                count, key = self.tokenizer.count(item) + 1, item
            if count > self.max_model_len:
                raise ApiError(
                    f"This model's maximum context length is {self.max_model_len} tokens. "
                    f"However, you requested {count} tokens in the input for embedding "
                    "generation. Please reduce the length of the input.",
                    param="input_tokens",
                )
            keys.append(key)
            total += count
        if self.profile.mode == "roofline":
            delay = self.engine.cost.prefill_seconds(total)
        else:
            delay = self.profile.fixed.ttft_ms / 1e3
        if delay > 0:
            await asyncio.sleep(delay)
        vectors = [embedding(k, dim, self.settings.seed) for k in keys]
        data: list[list[float] | str] = (
            [embedding_base64(v) for v in vectors]
            if body.encoding_format == "base64"
            else list(vectors)
        )
        await _send_bytes(send, 200, embedding_response(self.model_name, data, total))

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._check_ready()
        body = models_response(
            self.model_name, self.profile.root, self.max_model_len, int(time.time())
        )
        await _send_bytes(send, 200, body)

    async def health(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_bytes(send, 200 if self.ready else 503, b"", [])

    async def version(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_bytes(send, 200, orjson.dumps({"version": self.profile.vllm_version}))

    async def metrics_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.metrics.render()
        await _send_bytes(send, 200, body, [(b"content-type", CONTENT_TYPE.encode())])

    async def tokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        if raw is None:
            return
        body = parse(TokenizeRequest, raw)
        self._check_model(body.model)
        if body.messages is not None:
            tools = [t.model_dump(exclude_none=True) for t in body.tools] if body.tools else None
            text = render_chat(body.messages, tools, body.add_generation_prompt)
            ids = self.tokenizer.encode(text)
        else:
            ids = self.tokenizer.encode(body.prompt or "", add_bos=body.add_special_tokens)
        strs = [self.tokenizer.token_str(t) for t in ids] if body.return_token_strs else None
        out = {
            "count": len(ids),
            "max_model_len": self.max_model_len,
            "tokens": ids,
            "token_strs": strs,
        }
        await _send_bytes(send, 200, orjson.dumps(out))

    async def detokenize(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await _read_body(receive)
        if raw is None:
            return
        body = parse(DetokenizeRequest, raw)
        self._check_model(body.model)
        text = self.tokenizer.decode(body.tokens)
        await _send_bytes(send, 200, orjson.dumps({"prompt": text}))


def create_app(settings: SimSettings | None = None, profile: Profile | None = None) -> SimApp:
    """Build the simulator's ASGI app.

    ``settings`` defaults to :class:`SimSettings` read from the environment;
    ``profile`` defaults to the one the settings describe (``settings.resolve_profile()``).
    """
    settings = settings if settings is not None else SimSettings()
    profile = profile if profile is not None else settings.resolve_profile()
    return SimApp(settings, profile)
