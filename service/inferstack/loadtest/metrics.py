"""Per-request timing and run aggregates, defined as ``vllm bench serve`` defines them.

No Locust, no gevent, no numpy: the load generator feeds :class:`StreamRecorder` with SSE
events and their arrival times, and the controller turns the resulting
:class:`RequestRecord` rows into the figures of vLLM's "Serving Benchmark Result" block.

Definitions (vLLM ``benchmarks/lib/endpoint_request_func.py`` and ``benchmarks/serve.py``):

- TTFT: send -> the first SSE event whose ``choices`` list is non-empty (its text may be empty).
- ITL: the gap between every two consecutive such events, pooled over all requests.
- E2E latency: send -> the last such event; the usage-only final event does not count.
- TPOT: (E2E - TTFT) / (output tokens - 1), only for requests with more than one output token.
- output tokens: ``usage.completion_tokens`` of the stream (``stream_options.include_usage``).

Where inferstack is stricter than vLLM: a stream that carries an ``error`` event or ends before
``data: [DONE]`` counts as failed (vLLM counts it as a success once a first chunk came). When a
server sends no usage, output tokens fall back to the number of token events (vLLM re-tokenizes
the text); such requests are counted in ``usage_missing``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

NO_FIRST_CHUNK = "Never received a valid chunk to calculate TTFT."
CUT_SHORT = "stream ended before data: [DONE]"

# The metrics whose distributions are reported, in vLLM's order and with vLLM's headers.
METRIC_HEADERS: dict[str, tuple[str, str]] = {
    "ttft": ("TTFT", "Time to First Token"),
    "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
    "itl": ("ITL", "Inter-token Latency"),
    "e2el": ("E2EL", "End-to-end Latency"),
    "client_queue_time": ("Client Queue Time", "Client-side Queueing"),
}
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


@dataclass(slots=True)
class RequestRecord:
    """One request as the load generator saw it. Times in seconds."""

    index: int
    start: float
    """Send time, seconds after the run's start (common to every generator process)."""
    success: bool
    ttft: float = 0.0
    latency: float = 0.0
    """E2E: send -> last token event."""
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    usage: bool = False
    """Output tokens came from the server's usage (else: counted token events)."""
    queue_time: float = 0.0
    """Client-side wait between the request's scheduled arrival and its send (rate mode)."""
    error: str = ""
    status: int = 0
    worker: str = ""

    @property
    def tpot(self) -> float | None:
        if not self.success or self.output_tokens <= 1:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)

    @property
    def end(self) -> float:
        return self.start + self.latency

    def to_row(self) -> list[Any]:
        """Compact form for transport between generator processes."""
        return [
            self.index,
            self.start,
            self.success,
            self.ttft,
            self.latency,
            self.itl,
            self.output_tokens,
            self.prompt_tokens,
            self.usage,
            self.queue_time,
            self.error,
            self.status,
            self.worker,
        ]

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RequestRecord:
        return cls(
            index=int(row[0]),
            start=float(row[1]),
            success=bool(row[2]),
            ttft=float(row[3]),
            latency=float(row[4]),
            itl=[float(x) for x in row[5]],
            output_tokens=int(row[6]),
            prompt_tokens=int(row[7]),
            usage=bool(row[8]),
            queue_time=float(row[9]),
            error=str(row[10]),
            status=int(row[11]),
            worker=str(row[12]),
        )


class StreamRecorder:
    """Turns the SSE events of one streamed answer, with their arrival times, into a record.

    ``start`` and every ``t`` come from the same clock (``time.perf_counter``); ``t`` is taken
    when the bytes of the event arrived, before any parsing.
    """

    __slots__ = (
        "chunks",
        "done",
        "error",
        "itl",
        "last",
        "output_tokens",
        "prompt_tokens",
        "start",
        "ttft",
    )

    def __init__(self, start: float) -> None:
        self.start = start
        self.ttft: float | None = None
        self.last = start
        self.itl: list[float] = []
        self.chunks = 0
        self.output_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.done = False
        self.error = ""

    def feed(self, event: bytes, t: float) -> bool:
        """One SSE event (separator excluded) that arrived at ``t``.

        Returns False once the stream is over: ``[DONE]``, an error event, or garbage.
        """
        data = _event_data(event)
        if data is None:
            return True  # blank line, comment or a field without data
        if data == b"[DONE]":
            self.done = True
            return False
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.error = "unparsable stream event: " + data[:200].decode(errors="replace")
            return False
        if not isinstance(obj, dict):
            self.error = "stream event is not a JSON object"
            return False
        if obj.get("error"):
            self.error = "error event in stream: " + _error_message(obj)
            return False
        if obj.get("choices"):
            if self.ttft is None:
                self.ttft = t - self.start
            else:
                self.itl.append(t - self.last)
            self.last = t
            self.chunks += 1
        usage = obj.get("usage")
        if isinstance(usage, dict):
            completion = usage.get("completion_tokens")
            if isinstance(completion, int):
                self.output_tokens = completion
            prompt = usage.get("prompt_tokens")
            if isinstance(prompt, int):
                self.prompt_tokens = prompt
        return True

    def fail(self, error: str) -> None:
        self.error = error or "request failed"

    def record(
        self,
        index: int,
        *,
        start: float,
        prompt_tokens: int = 0,
        queue_time: float = 0.0,
        status: int = 0,
        worker: str = "",
    ) -> RequestRecord:
        """The finished request; ``start`` places it on the run's common timeline."""
        error = self.error
        if not error and self.ttft is None:
            error = NO_FIRST_CHUNK
        elif not error and not self.done:
            error = CUT_SHORT
        usage = self.output_tokens is not None
        out = self.output_tokens if self.output_tokens is not None else self.chunks
        if self.prompt_tokens is not None:
            prompt_tokens = self.prompt_tokens
        ok = not error
        return RequestRecord(
            index=index,
            start=start,
            success=ok,
            ttft=self.ttft or 0.0,
            latency=self.last - self.start if self.ttft is not None else 0.0,
            itl=self.itl,
            output_tokens=out if ok else 0,
            prompt_tokens=prompt_tokens,
            usage=usage,
            queue_time=queue_time,
            error=error,
            status=status,
            worker=worker,
        )


def _event_data(event: bytes) -> bytes | None:
    """The data of one SSE event: ``data:`` lines joined; None when it carries none."""
    if event.startswith(b"data: ") and b"\n" not in event.rstrip():
        return event[6:].strip()  # the common case: one data line
    lines = [
        line[5:].removeprefix(b" ")
        for line in event.replace(b"\r\n", b"\n").split(b"\n")
        if line.startswith(b"data:")
    ]
    if not lines:
        return None
    return b"\n".join(lines).strip()


def _error_message(obj: Mapping[str, Any]) -> str:
    err = obj.get("error")
    if isinstance(err, dict):
        return str(err.get("message") or err.get("code") or err)
    return str(err)


# --- aggregates -----------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """numpy's default (linear interpolation) percentile; 0 for no values, as vLLM reports."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return ordered[lo]
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def distribution_ms(values: Sequence[float], percentiles: Iterable[float]) -> dict[str, float]:
    """mean, median, std and the given percentiles, in milliseconds (vLLM's key suffixes)."""
    out = {
        "mean": statistics.fmean(values) * 1000 if values else 0.0,
        "median": percentile(values, 50) * 1000,
        "std": statistics.pstdev(values) * 1000 if len(values) > 1 else 0.0,
    }
    for p in percentiles:
        out[f"p{percentile_word(p)}"] = percentile(values, p) * 1000
    return out


def percentile_word(p: float) -> str:
    return str(int(p)) if int(p) == p else str(p)


def peak_output_tokens_per_s(records: Sequence[RequestRecord]) -> float:
    """Most token events in one 1-s bin from the first send (vLLM's peak output throughput)."""
    ok = [r for r in records if r.success]
    if not ok:
        return 0.0
    t0 = min(r.start for r in ok)
    bins = [0] * (math.ceil(max(r.end for r in ok) - t0) + 1)
    for r in ok:
        t = r.start + r.ttft
        times = [t]
        for gap in r.itl:
            t += gap
            times.append(t)
        for tt in times:
            b = int(tt - t0)
            if 0 <= b < len(bins):
                bins[b] += 1
    return float(max(bins))


def peak_concurrency(records: Sequence[RequestRecord]) -> int:
    """Exact peak of overlapping [send, last token) intervals of successful requests."""
    events: list[tuple[float, int]] = []
    for r in records:
        if r.success:
            events.append((r.start, 1))
            events.append((r.end, -1))
    events.sort()  # at equal times -1 sorts before +1: half-open intervals
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def parse_goodput(pairs: Iterable[str]) -> dict[str, float]:
    """``["ttft:500", "tpot:50"]`` -> {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    out: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        name = name.strip()
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(
                f"goodput SLO {pair!r}: use KEY:MILLISECONDS with KEY one of "
                f"{', '.join(GOODPUT_METRICS)}"
            )
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"goodput SLO {pair!r}: {value!r} is not a number") from None
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"goodput SLO {pair!r}: the value must be a non-negative number")
        out[name] = ms
    return out


def summarize(
    records: Sequence[RequestRecord],
    duration: float,
    *,
    goodput: Mapping[str, float] | None = None,
    percentiles: Sequence[float] = (50, 90, 95, 99),
) -> dict[str, Any]:
    """The run's aggregates under vLLM's result keys (``mean_ttft_ms``, ``p99_itl_ms`` ...)."""
    ok = [r for r in records if r.success]
    ttfts = [r.ttft for r in ok]
    e2els = [r.latency for r in ok]
    tpots = [t for r in ok if (t := r.tpot) is not None]
    itls = [gap for r in ok for gap in r.itl]
    queue = [r.queue_time for r in ok]
    total_in = sum(r.prompt_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    good = 0
    if goodput:
        for r in ok:
            measured = {"ttft": r.ttft, "tpot": r.tpot or 0.0, "e2el": r.latency}
            if all(measured[k] <= slo / 1000 for k, slo in goodput.items()):
                good += 1
    dur = duration if duration > 0 else float("nan")
    out: dict[str, Any] = {
        "duration": duration,
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / dur,
        "request_goodput": good / dur if goodput else None,
        "output_throughput": total_out / dur,
        "total_token_throughput": (total_in + total_out) / dur,
        "max_output_tokens_per_s": peak_output_tokens_per_s(records),
        "max_concurrent_requests": peak_concurrency(records),
        "usage_missing": sum(1 for r in ok if not r.usage),
    }
    for name, values in (
        ("ttft", ttfts),
        ("tpot", tpots),
        ("itl", itls),
        ("e2el", e2els),
        ("client_queue_time", queue),
    ):
        for key, value in distribution_ms(values, percentiles).items():
            out[f"{key}_{name}_ms"] = value
    return out


def error_counts(records: Iterable[RequestRecord], limit: int = 10) -> list[tuple[str, int]]:
    """The most frequent failure messages."""
    counts: dict[str, int] = {}
    for r in records:
        if not r.success:
            counts[r.error] = counts.get(r.error, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
