"""Request scheduling and timing: the part of the simulator that plays the GPU.

Two engines share one interface (:class:`Engine`):

``RooflineEngine``
    vLLM v1's continuous batching, one iteration at a time: running requests
    first (a decode token each, or the next chunk of their prefill), then waiting
    requests while ``max_num_seqs`` and the ``max_num_batched_tokens`` budget
    allow (chunked prefill). KV cache is allocated in blocks as sequences grow;
    when a running request needs a block and none is free, the most recently
    admitted request is preempted (recompute: its blocks are freed and it goes
    back to the front of the queue). Each iteration lasts what the profile's
    roofline says (:class:`inferstack.sim.profiles.CostModel`).

``FixedEngine``
    No batching model: an admitted request gets its first token ``ttft_ms`` after
    admission and one every ``itl_ms`` after that, against absolute deadlines.
    Admission is still bounded by ``max_num_seqs``. With 0/0 tokens come as fast
    as the event loop turns.

A consumer drives a request with :meth:`Engine.next_token` (streaming) or
:meth:`Engine.wait_done` (non-streaming) and calls :meth:`Engine.abort` when its
client goes away; an aborted request leaves the running/waiting sets and frees
its KV blocks at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from inferstack.sim.metrics import FinishedStats, SimMetrics
from inferstack.sim.profiles import CostModel, Profile

log = logging.getLogger("inferstack.sim.engine")

WAITING = 0
RUNNING = 1
FINISHED = 2
ABORTED = 3

now = time.monotonic


class SimRequest:
    """One sequence in the engine (a chat/completion choice)."""

    __slots__ = (
        "arrival",
        "blocks",
        "consumed",
        "finish_reason",
        "finished_ts",
        "first_token_ts",
        "last_token_ts",
        "max_tokens",
        "max_tokens_param",
        "n",
        "num_computed",
        "num_output",
        "preemptions",
        "prompt_tokens",
        "scheduled_ts",
        "stall_at",
        "stall_s",
        "stalled_until",
        "state",
        "target",
        "waiter",
    )

    def __init__(
        self,
        prompt_tokens: int,
        target: int,
        finish_reason: str,
        max_tokens: int,
        max_tokens_param: int | None = None,
        n: int = 1,
        stall_at: int = -1,
        stall_s: float = 0.0,
        arrival: float | None = None,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.target = target
        self.finish_reason = finish_reason
        self.max_tokens = max_tokens
        self.max_tokens_param = max_tokens_param
        self.n = n
        self.stall_at = stall_at
        self.stall_s = stall_s
        self.arrival = now() if arrival is None else arrival
        self.state = WAITING
        self.num_computed = 0
        self.num_output = 0
        self.consumed = 0
        self.blocks = 0
        self.preemptions = 0
        self.scheduled_ts = -1.0
        self.first_token_ts = -1.0
        self.last_token_ts = -1.0
        self.finished_ts = -1.0
        self.stalled_until = 0.0
        self.waiter: asyncio.Future[None] | None = None

    @property
    def done(self) -> bool:
        return self.state >= FINISHED

    @property
    def aborted(self) -> bool:
        return self.state == ABORTED


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _wait_woken(fut: asyncio.Future[None], delay: float | None) -> None:
    """Wait until ``fut`` is woken, or ``delay`` seconds pass (None: no time limit)."""
    handle = asyncio.get_running_loop().call_later(delay, _wake, fut) if delay is not None else None
    try:
        await fut
    finally:
        if handle is not None:
            handle.cancel()


async def _park(req: SimRequest, delay: float | None) -> None:
    """Wait until woken (token, finish, abort) or ``delay`` seconds pass."""
    req.waiter = asyncio.get_running_loop().create_future()
    try:
        await _wait_woken(req.waiter, delay)
    finally:
        req.waiter = None


def _notify(req: SimRequest) -> None:
    fut = req.waiter
    if fut is not None and not fut.done():
        fut.set_result(None)


class Engine:
    """Interface and shared bookkeeping of both engines."""

    def __init__(self, profile: Profile, metrics: SimMetrics) -> None:
        self.profile = profile
        self.metrics = metrics
        cost = CostModel(profile)
        self.cost = cost
        self.block_size = profile.engine.block_size
        self.num_blocks = cost.num_blocks()
        self.kv_cache_tokens = cost.kv_cache_tokens()
        self.max_num_seqs = profile.engine.max_num_seqs
        self.max_num_batched_tokens = profile.engine.max_num_batched_tokens
        self.used_blocks = 0
        self.waiting: deque[SimRequest] = deque()
        metrics.bind_state(self.state)

    # -- interface --------------------------------------------------------------

    def submit(self, req: SimRequest) -> None:
        raise NotImplementedError

    async def next_token(self, req: SimRequest) -> int:
        """Index of the request's next token once it exists, or -1 when done/aborted."""
        raise NotImplementedError

    async def wait_done(self, req: SimRequest) -> None:
        """Return when the request has finished or was aborted."""
        raise NotImplementedError

    def abort(self, req: SimRequest) -> None:
        raise NotImplementedError

    def completes_now(self, req: SimRequest) -> bool:
        """True when :meth:`wait_done` would return without waiting."""
        return req.done

    @property
    def num_running(self) -> int:
        raise NotImplementedError

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- shared ---------------------------------------------------------------

    def state(self) -> tuple[int, int, float]:
        """(running, waiting, KV usage) for the metrics gauges."""
        usage = self.used_blocks / self.num_blocks if self.num_blocks else 0.0
        return self.num_running, len(self.waiting), min(1.0, usage)

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _record_finished(self, req: SimRequest, t: float) -> None:
        req.finished_ts = t
        first = req.first_token_ts if req.first_token_ts >= 0 else t
        sched = req.scheduled_ts if req.scheduled_ts >= 0 else t
        self.metrics.finished(
            FinishedStats(
                finish_reason=req.finish_reason,
                e2e=t - req.arrival,
                queued=sched - req.arrival,
                prefill=first - sched,
                decode=t - first,
                inference=t - sched,
                prompt_tokens=req.prompt_tokens,
                generation_tokens=req.num_output,
                max_tokens_param=req.max_tokens_param,
                max_tokens=req.max_tokens,
                n=req.n,
            )
        )

    def _stamp_token(self, req: SimRequest, t: float) -> None:
        """Record the timing of the request's next output token (``req.num_output`` so far)."""
        if req.num_output == 0:
            req.first_token_ts = t
            self.metrics.first_token(t - req.arrival, req.prompt_tokens)
        else:
            self.metrics.next_token(t - req.last_token_ts)
        req.last_token_ts = t


class FixedEngine(Engine):
    """Fixed TTFT/ITL per request, admission bounded by ``max_num_seqs``."""

    def __init__(self, profile: Profile, metrics: SimMetrics) -> None:
        super().__init__(profile, metrics)
        self.ttft = profile.fixed.ttft_ms / 1e3
        self.itl = profile.fixed.itl_ms / 1e3
        self.instant = self.ttft == 0 and self.itl == 0
        self._running = 0

    @property
    def num_running(self) -> int:
        return self._running

    def submit(self, req: SimRequest) -> None:
        if self._running < self.max_num_seqs and not self.waiting:
            self._admit(req, now())
        else:
            req.state = WAITING
            self.waiting.append(req)

    def _admit(self, req: SimRequest, t: float) -> None:
        req.state = RUNNING
        req.scheduled_ts = t
        self._running += 1
        # KV is not a constraint in this mode; it only feeds the usage gauge.
        req.blocks = self._blocks_for(req.prompt_tokens + req.target)
        self.used_blocks += req.blocks
        self.metrics.scheduled(req.prompt_tokens)
        _notify(req)

    def _release(self, req: SimRequest) -> None:
        self._running -= 1
        self.used_blocks -= req.blocks
        req.blocks = 0
        waiting = self.waiting
        if waiting and self._running < self.max_num_seqs:
            t = now()
            while waiting and self._running < self.max_num_seqs:
                self._admit(waiting.popleft(), t)

    def _due(self, req: SimRequest, k: int) -> float:
        due = req.scheduled_ts + self.ttft + k * self.itl
        if 0 <= req.stall_at < k:
            due += req.stall_s
        return due

    async def _admitted(self, req: SimRequest) -> bool:
        while req.state == WAITING:
            await _park(req, None)
        return req.state == RUNNING

    async def next_token(self, req: SimRequest) -> int:
        if req.state != RUNNING and not await self._admitted(req):
            return -1
        k = req.num_output
        if k >= req.target:
            return -1
        delay = self._due(req, k) - now()
        if delay > 0:
            await _park(req, delay)
            if req.state != RUNNING:
                return -1
        elif self.instant and k:
            # Tokens as fast as possible, but let the other streams run between chunks.
            await asyncio.sleep(0)
            if req.state != RUNNING:
                return -1
        t = now()
        self._stamp_token(req, t)
        req.num_output = k + 1
        req.consumed = k + 1
        if k + 1 >= req.target:
            self._finish(req, t)
        return k

    def completes_now(self, req: SimRequest) -> bool:
        if req.state != RUNNING:
            return req.done
        return self._due(req, req.target - 1) <= now()

    async def wait_done(self, req: SimRequest) -> None:
        if req.state != RUNNING and not await self._admitted(req):
            return
        last = req.target - 1
        delay = self._due(req, last) - now()
        if delay > 0:
            await _park(req, delay)
            if req.state != RUNNING:
                return
        t = now()
        first = req.scheduled_ts + self.ttft
        req.first_token_ts = min(first, t)
        self.metrics.first_token(req.first_token_ts - req.arrival, req.prompt_tokens)
        self.metrics.tokens(last, self.itl)
        req.num_output = req.consumed = req.target
        req.last_token_ts = t
        self._finish(req, t)

    def _finish(self, req: SimRequest, t: float) -> None:
        req.state = FINISHED
        self._release(req)
        self._record_finished(req, t)
        _notify(req)

    def abort(self, req: SimRequest) -> None:
        if req.state == RUNNING:
            req.state = ABORTED
            self._release(req)
        elif req.state == WAITING:
            req.state = ABORTED
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
        _notify(req)


class RooflineEngine(Engine):
    """Continuous batching stepped per iteration, timed by the roofline."""

    def __init__(self, profile: Profile, metrics: SimMetrics) -> None:
        super().__init__(profile, metrics)
        self.running: list[SimRequest] = []
        self.free_blocks = self.num_blocks
        self._task: asyncio.Task[None] | None = None
        self._kick: asyncio.Future[None] | None = None
        self._prev_end = -1.0
        self.steps = 0
        self.on_step: Callable[[float, int, int], None] | None = None

    @property
    def num_running(self) -> int:
        return len(self.running)

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        self._ensure_task()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def _poke(self) -> None:
        kick = self._kick
        if kick is not None and not kick.done():
            kick.set_result(None)

    async def _idle(self, delay_s: float | None) -> None:
        """Block (no CPU) until a request arrives/leaves or ``delay_s`` passes."""
        self._kick = asyncio.get_running_loop().create_future()
        try:
            await _wait_woken(self._kick, delay_s)
        finally:
            self._kick = None

    # -- interface --------------------------------------------------------------

    def submit(self, req: SimRequest) -> None:
        req.state = WAITING
        self.waiting.append(req)
        self._ensure_task()
        self._poke()

    async def next_token(self, req: SimRequest) -> int:
        while True:
            if req.state == ABORTED:
                return -1
            k = req.consumed
            if k < req.num_output:
                req.consumed = k + 1
                return k
            if req.state == FINISHED:
                return -1
            await _park(req, None)

    async def wait_done(self, req: SimRequest) -> None:
        while req.state < FINISHED:
            await _park(req, None)
        req.consumed = req.num_output

    def abort(self, req: SimRequest) -> None:
        if req.state == RUNNING:
            self.running.remove(req)
            self._free(req)
        elif req.state == WAITING:
            with contextlib.suppress(ValueError):
                self.waiting.remove(req)
            self._free(req)
        else:
            return
        req.state = ABORTED
        _notify(req)
        self._poke()

    # -- KV blocks --------------------------------------------------------------

    def _allocate(self, req: SimRequest, tokens: int) -> bool:
        need = self._blocks_for(tokens) - req.blocks
        if need <= 0:
            return True
        if need > self.free_blocks:
            return False
        self.free_blocks -= need
        self.used_blocks += need
        req.blocks += need
        return True

    def _free(self, req: SimRequest) -> None:
        self.free_blocks += req.blocks
        self.used_blocks -= req.blocks
        req.blocks = 0

    def _preempt(self, req: SimRequest) -> None:
        self._free(req)
        req.num_computed = 0
        req.state = WAITING
        req.preemptions += 1
        self.waiting.appendleft(req)
        self.metrics.preempted()

    # -- scheduling ---------------------------------------------------------------

    def schedule(self, t: float) -> list[tuple[SimRequest, int]]:
        """One iteration's batch: (request, new tokens) pairs, as vLLM v1 schedules."""
        budget = self.max_num_batched_tokens
        batch: list[tuple[SimRequest, int]] = []
        running = self.running
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            if req.stalled_until > t:
                i += 1
                continue
            n = min(req.prompt_tokens + req.num_output - req.num_computed, budget)
            if n <= 0:  # pragma: no cover - a running request always has work
                i += 1
                continue
            while not self._allocate(req, req.num_computed + n):
                victim = running.pop()
                self._preempt(victim)
                preempted = True
                if victim is req:
                    break
            else:
                batch.append((req, n))
                budget -= n
                i += 1
        if not preempted:
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < self.max_num_seqs:
                req = waiting[0]
                n = min(req.prompt_tokens + req.num_output - req.num_computed, budget)
                if not self._allocate(req, req.num_computed + n):
                    break
                waiting.popleft()
                req.state = RUNNING
                running.append(req)
                if req.scheduled_ts < 0:
                    req.scheduled_ts = t
                self.metrics.scheduled(req.prompt_tokens + req.num_output)
                batch.append((req, n))
                budget -= n
        return batch

    def batch_seconds(self, batch: list[tuple[SimRequest, int]]) -> float:
        tokens = 0
        kv_read = 0
        pairs = 0.0
        for req, n in batch:
            c = req.num_computed
            tokens += n
            kv_read += c
            pairs += n * c + n * (n + 1) / 2
        return self.cost.step_seconds(tokens, kv_read, pairs)

    def complete(self, batch: list[tuple[SimRequest, int]], t: float) -> int:
        """Apply a finished iteration at time ``t``; returns the tokens it processed."""
        total = 0
        for req, n in batch:
            if req.state != RUNNING:
                continue  # aborted while the step ran
            req.num_computed += n
            total += n
            if req.num_computed >= req.prompt_tokens + req.num_output:
                self._emit(req, t)
        self.metrics.iteration(total)
        return total

    def _emit(self, req: SimRequest, t: float) -> None:
        self._stamp_token(req, t)
        req.num_output += 1
        if req.num_output == req.stall_at + 1 and req.stall_s > 0:
            req.stalled_until = t + req.stall_s
        if req.num_output >= req.target:
            req.state = FINISHED
            self.running.remove(req)
            self._free(req)
            self._record_finished(req, t)
        _notify(req)

    async def _run(self) -> None:
        while True:
            try:
                await self._iterate()
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - a bug must not wedge every request
                log.exception("engine iteration failed; aborting in-flight requests")
                for req in [*self.running, *self.waiting]:
                    self.abort(req)

    async def _iterate(self) -> None:
        while True:
            if not self.running and not self.waiting:
                self._prev_end = -1.0
                await self._idle(None)
                continue
            t = now()
            batch = self.schedule(t)
            if not batch:
                stalled = [r.stalled_until for r in self.running if r.stalled_until > t]
                await self._idle(min(stalled) - t if stalled else None)
                self._prev_end = -1.0
                continue
            step = self.batch_seconds(batch)
            # Back-to-back iterations start where the previous one ended: timer
            # lateness and the HTTP work between steps (a separate process in
            # vLLM) do not stretch the GPU timeline. After idling, start now.
            lag = t - self._prev_end
            start = self._prev_end if 0 <= lag < max(0.005, step) else t
            end = start + step
            delay = end - now()
            if delay > 0:
                await asyncio.sleep(delay)
            self._prev_end = end
            self.steps += 1
            t_done = now()
            processed = self.complete(batch, t_done)
            if self.on_step is not None:
                self.on_step(step, processed, len(batch))


def make_engine(profile: Profile, metrics: SimMetrics) -> Engine:
    if profile.mode == "roofline":
        return RooflineEngine(profile, metrics)
    return FixedEngine(profile, metrics)
