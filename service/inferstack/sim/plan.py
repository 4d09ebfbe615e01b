"""What each choice of a request will produce: length, finish reason, text, tool call.

Everything is decided when the request arrives, from the request's seed, so the
engine only has to pace the tokens and the same request always gives the same
output.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from inferstack.sim.engine import SimRequest
from inferstack.sim.protocol import random_id
from inferstack.sim.tokens import (
    GEN_JSON,
    GEN_PIECES,
    Tokenizer,
    generate_piece_ids,
    natural_length,
    tool_arguments,
)

ToolSpec = tuple[str, dict[str, Any] | None]
"""(function name, JSON-schema parameters) of the tool the simulated model calls."""


@dataclass(slots=True)
class ToolPlan:
    call_id: str
    name: str
    arguments: str
    fragments: list[str]


@dataclass(slots=True)
class Choice:
    """One output sequence: its engine request and the text it will produce."""

    index: int
    req: SimRequest
    stop_reason: str | None = None
    texts: list[str] | None = None  # explicit token texts (stop strings)
    ids: Iterator[int] | None = None  # lazy generated text
    tool: ToolPlan | None = None

    def piece_json(self, k: int) -> bytes:
        if self.texts is not None:
            return orjson.dumps(self.texts[k])
        assert self.ids is not None
        return GEN_JSON[next(self.ids)]

    def full_text(self) -> str:
        if self.texts is not None:
            return "".join(self.texts[: self.req.num_output])
        assert self.ids is not None
        ids = self.ids
        return "".join([GEN_PIECES[next(ids)] for _ in range(self.req.num_output)])


def truncate_at_stop(
    seed: int, target: int, finish: str, stops: list[str], min_tokens: int
) -> tuple[list[str], int, str, str | None]:
    """Token texts up to the first stop string (excluded), as vLLM stops on it.

    Returns (texts, number of tokens, finish reason, stop string or None). Stop
    strings that end before ``min_tokens`` tokens do not count.
    """
    pieces = [GEN_PIECES[i] for i in itertools.islice(generate_piece_ids(seed), target)]
    text = "".join(pieces)
    floor = len("".join(pieces[:min_tokens]))
    best: tuple[int, str] | None = None
    for stop in stops:
        pos = text.find(stop, floor)
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, stop)
    if best is None:
        return pieces, target, finish, None
    pos, stop = best
    end = pos + len(stop)
    out: list[str] = []
    offset = 0
    for piece in pieces:
        start = offset
        offset += len(piece)
        out.append(piece[: max(0, pos - start)] if start < pos else "")
        if offset >= end:
            break
    return out, len(out), "stop", stop


def plan_choice(
    *,
    index: int,
    seed: int,
    prompt_tokens: int,
    max_tokens: int,
    max_tokens_param: int | None,
    n: int,
    ignore_eos: bool,
    min_tokens: int,
    stops: list[str],
    tool: ToolSpec | None,
    tokenizer: Tokenizer,
    stall: Callable[[int], tuple[int, float]],
) -> Choice:
    """Decide one choice's output and wrap it in an engine request.

    Without ``ignore_eos`` the sequence ends at a seeded "natural" EOS (16-256
    tokens, at least ``min_tokens``) or at ``max_tokens``, whichever comes
    first. A tool call is one header token plus one token per argument
    fragment. ``stall`` maps the token count to (stall after token, seconds).
    """
    stop_reason: str | None = None
    texts: list[str] | None = None
    ids: Iterator[int] | None = None
    plan_tool: ToolPlan | None = None
    if tool is not None:
        name, params = tool
        arguments = tool_arguments(params, seed)
        fragments = tokenizer.pieces(arguments) or [arguments]
        plan_tool = ToolPlan(f"chatcmpl-tool-{random_id()}", name, arguments, fragments)
        wanted = 1 + len(fragments)
        target = min(wanted, max_tokens)
        finish = "tool_calls" if target == wanted else "length"
    else:
        if ignore_eos:
            target, finish = max_tokens, "length"
        else:
            natural = max(natural_length(seed), min_tokens, 1)
            target, finish = (natural, "stop") if natural <= max_tokens else (max_tokens, "length")
        if stops:
            texts, target, finish, stop_reason = truncate_at_stop(
                seed, target, finish, stops, min_tokens
            )
        else:
            ids = generate_piece_ids(seed)
    stall_at, stall_s = stall(target)
    req = SimRequest(
        prompt_tokens=prompt_tokens,
        target=target,
        finish_reason=finish,
        max_tokens=max_tokens,
        max_tokens_param=max_tokens_param,
        n=n if index == 0 else 0,  # vLLM observes n once per client request
        stall_at=stall_at,
        stall_s=stall_s,
    )
    return Choice(index, req, stop_reason, texts, ids, plan_tool)
