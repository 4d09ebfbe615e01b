"""The Locust side of a generator process: the streaming OpenAI user and what feeds it.

Imported only in processes that run Locust (gevent monkey-patched). One :class:`Generator` per
process holds the request bodies, hands out tickets (closed loop: a count or a deadline;
fixed rate: scheduled arrivals) and ships finished requests to the controller with Locust's
custom messages, so the same code serves a single process, local worker processes and
distributed workers on other hosts.

Per-chunk work is one ``readline`` on geventhttpclient's socket buffer, one
``time.perf_counter()`` and one orjson parse; everything else happens once per request.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import gevent
from gevent.event import Event
from gevent.queue import Queue
from locust import FastHttpUser, constant, task
from locust.env import Environment
from locust.runners import Runner

from inferstack.loadtest.metrics import RequestRecord, StreamRecorder, percentile

log = logging.getLogger("inferstack.loadtest")

MSG_SETUP = "inferstack_setup"  # controller -> generators: target, headers, request bodies
MSG_STEP = "inferstack_step"  # controller -> generators: a new level starts (before spawning)
MSG_GO = "inferstack_go"  # controller -> one generator: start time and its tickets
MSG_READY = "inferstack_ready"  # generator -> controller: users ready (connection open)
MSG_ROWS = "inferstack_rows"  # generator -> controller: finished requests
MSG_DONE = "inferstack_done"  # generator -> controller: every user finished; client figures

SSE_SEP = b"\n\n"
FLUSH_S = 1.0
LAG_PERIOD_S = 0.01

Ticket = tuple[int, float]  # (request index, scheduled arrival on perf_counter; 0 = none)


class Generator:
    """Per-process state shared by the users of one generator process."""

    def __init__(self, env: Environment, node: str) -> None:
        self.env = env
        self.node = node
        self.runner: Runner | None = None
        self.bodies: list[bytes] = []
        self.prompt_lens: list[int] = []
        self.path = "/v1/chat/completions"
        self.label = "chat/completions"
        self.headers: dict[str, str] = {}
        self.fire_events = True
        self.preconnect = True
        self.standalone = False
        self.step = -1
        self._new_step(-1)

    # --- messages from the controller ----------------------------------------------------

    def on_setup(self, data: dict[str, Any]) -> None:
        self.bodies = list(data["bodies"])
        self.prompt_lens = [int(x) for x in data["prompt_lens"]]
        self.path = str(data["path"])
        self.label = self.path.removeprefix("/v1/")
        self.headers = {str(k): str(v) for k, v in data["headers"].items()}
        self.fire_events = bool(data.get("fire_events", True))
        StreamUser.host = str(data["base_url"])
        StreamUser.network_timeout = float(data["timeout_s"])
        StreamUser.connection_timeout = min(60.0, float(data["timeout_s"]))
        StreamUser.insecure = bool(data.get("insecure", False))

    def free_run(self) -> None:
        """No controller (plain ``locust -f``): every user sends until Locust stops it; the
        figures go to Locust's statistics only."""
        self.standalone = True
        self._new_step(0)
        self.perf_t0 = time.perf_counter()
        self.go.set()

    def on_step(self, data: dict[str, Any]) -> None:
        self._new_step(int(data["step"]))
        self.preconnect = bool(data.get("preconnect", True))

    def _new_step(self, step: int) -> None:
        previous: list[gevent.Greenlet[Any, Any]] = getattr(self, "_greenlets", [])
        gevent.killall(previous, block=False)  # a stale feeder or probe of an aborted level
        self.step = step
        self.go = Event()
        self.ready = 0
        self.users = 0
        self.finished = 0
        self.issued = 0
        self.count: int | None = None
        self.first = 0
        self.stride = 1
        self.deadline = float("inf")
        self.queue: Queue[Ticket | None] | None = None
        self.rows: list[list[Any]] = []
        self.perf_t0 = 0.0
        self.ramp_s = 0.0
        self.ramp_k = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lags: list[float] = []
        self.cpu0 = 0.0
        self.done_sent = False
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []

    def on_go(self, data: dict[str, Any]) -> None:
        if int(data["step"]) != self.step:
            return
        self.users = int(data["users"])
        self.perf_t0 = time.perf_counter() + (float(data["t0"]) - time.time())
        self.ramp_s = float(data.get("ramp_s") or 0.0)
        deadline = data.get("deadline")
        self.deadline = self.perf_t0 + float(deadline) if deadline is not None else float("inf")
        arrivals = data.get("arrivals")
        if arrivals is not None:
            self.queue = Queue()
            self._greenlets.append(gevent.spawn(self._feed_arrivals, arrivals))
        else:
            self.count = None if data.get("count") is None else int(data["count"])
            self.first = int(data.get("first", 0))
            self.stride = int(data.get("stride", 1))
        self._greenlets.append(gevent.spawn(self._start_at_t0))

    def _start_at_t0(self) -> None:
        gevent.sleep(max(0.0, self.perf_t0 - time.perf_counter()))
        self.cpu0 = time.process_time()
        self._greenlets.append(gevent.spawn(self._flush_loop))
        self._greenlets.append(gevent.spawn(self._lag_probe))
        self.go.set()
        if self.users == 0:
            self._send_done()

    def _feed_arrivals(self, arrivals: list[list[float]]) -> None:
        queue = self.queue
        assert queue is not None
        for index, offset in arrivals:
            at = self.perf_t0 + offset
            delay = at - time.perf_counter()
            if delay > 0:
                gevent.sleep(delay)
            queue.put((int(index), at))
        for _ in range(self.users):
            queue.put(None)

    # --- what users call -----------------------------------------------------------------

    def user_ready(self) -> None:
        if self.standalone:
            return
        self.ready += 1
        self._send(MSG_READY, {"step": self.step, "ready": self.ready})

    def ramp_wait(self) -> None:
        """Closed loop with a ramp-up: user k of n starts at t0 + ramp * k / n."""
        if self.ramp_s > 0 and self.users > 0:
            at = self.perf_t0 + self.ramp_s * self.ramp_k / self.users
            self.ramp_k += 1
            gevent.sleep(max(0.0, at - time.perf_counter()))

    def next_ticket(self) -> Ticket | None:
        if self.queue is not None:
            ticket: Ticket | None = self.queue.get()
            return ticket
        if self.count is not None and self.issued >= self.count:
            return None
        if time.perf_counter() >= self.deadline:
            return None
        index = self.first + self.issued * self.stride
        self.issued += 1
        return index, 0.0

    def user_finished(self) -> None:
        self.finished += 1
        if self.finished >= self.users:
            self._send_done()

    def add(self, record: RequestRecord) -> None:
        if not self.standalone:
            self.rows.append(record.to_row())

    # --- to the controller ---------------------------------------------------------------

    def _send(self, msg: str, data: dict[str, Any]) -> None:
        if self.runner is not None:
            self.runner.send_message(msg, data)

    def _flush(self) -> None:
        if self.rows:
            rows, self.rows = self.rows, []
            self._send(MSG_ROWS, {"step": self.step, "rows": rows})

    def _flush_loop(self) -> None:
        step = self.step
        while self.step == step and not self.done_sent:
            gevent.sleep(FLUSH_S)
            self._flush()

    def _lag_probe(self) -> None:
        """How late this process's event loop wakes up: the delay a chunk timestamp can carry."""
        step = self.step
        lags = self.lags
        while self.step == step and not self.done_sent:
            t = time.perf_counter()
            gevent.sleep(LAG_PERIOD_S)
            lags.append(time.perf_counter() - t - LAG_PERIOD_S)

    def _send_done(self) -> None:
        if self.done_sent:
            return
        self.done_sent = True
        now = time.perf_counter()
        wall = max(now - self.perf_t0, 1e-9)
        self._flush()
        lags = self.lags
        self._send(
            MSG_DONE,
            {
                "step": self.step,
                "node": self.node,
                "users": self.users,
                "finished_at": now - self.perf_t0,
                "cpu": (time.process_time() - self.cpu0) / wall,
                "lag_p50_ms": percentile(lags, 50) * 1000,
                "lag_p99_ms": percentile(lags, 99) * 1000,
                "lag_max_ms": max(lags, default=0.0) * 1000,
                "max_in_flight": self.max_in_flight,
            },
        )


GENERATOR: Generator | None = None


def install(env: Environment, runner: Runner, node: str | None = None) -> Generator:
    """Make this process a generator: register the controller's messages on ``runner``."""
    global GENERATOR
    gen = Generator(env, node or f"{socket.gethostname()}:{os.getpid()}")
    gen.runner = runner
    handlers: dict[str, Callable[[dict[str, Any]], None]] = {
        MSG_SETUP: gen.on_setup,
        MSG_STEP: gen.on_step,
        MSG_GO: gen.on_go,
    }
    for name, handler in handlers.items():
        runner.register_message(name, _adapt(handler))
    GENERATOR = gen
    return gen


def _adapt(handler: Callable[[dict[str, Any]], None]) -> Callable[..., None]:
    def listener(environment: Environment, msg: Any, **_kw: Any) -> None:
        handler(msg.data)

    return listener


def _http_error(status: int, resp: Any) -> str:
    err = getattr(resp, "error", None)
    if status == 0:
        return f"{type(err).__name__}: {err}" if err is not None else "no response"
    message = ""
    try:
        content = resp.content
        if content:
            import orjson

            obj = orjson.loads(content)
            message = str(obj.get("error", {}).get("message", "")) if isinstance(obj, dict) else ""
    except Exception:
        message = ""
    return f"HTTP {status}" + (f": {message}" if message else "")


class StreamUser(FastHttpUser):
    """One simulated client: sends streamed requests back to back as tickets allow."""

    host = "http://127.0.0.1:8000"
    wait_time = constant(0)
    concurrency = 1
    network_timeout = 600.0
    connection_timeout = 60.0
    insecure = False

    def on_start(self) -> None:
        gen = GENERATOR
        assert gen is not None, "inferstack.loadtest.user.install() was not called"
        self.gen = gen
        self.step = gen.step
        if gen.preconnect:
            self._connect()
        gen.user_ready()

    def _connect(self) -> None:
        """Open this user's keep-alive connection before the clock starts."""
        try:
            resp = self.client.request(
                "GET", "/v1/models", name="connect", headers=self.gen.headers
            )
            _ = resp.content
        except Exception as exc:  # the measured requests will report the failure
            log.debug("pre-connect failed: %s", exc)

    @task
    def stream_requests(self) -> None:
        gen = self.gen
        gen.go.wait()
        gen.ramp_wait()
        while gen.step == self.step:
            ticket = gen.next_ticket()
            if ticket is None:
                break
            gen.in_flight += 1
            gen.max_in_flight = max(gen.max_in_flight, gen.in_flight)
            try:
                gen.add(self.request(*ticket))
            finally:
                gen.in_flight -= 1
        if gen.step == self.step:
            gen.user_finished()
        Event().wait()  # idle until the controller stops the users

    def request(self, index: int, arrival: float) -> RequestRecord:
        gen = self.gen
        i = index % len(gen.bodies)
        pc = time.perf_counter
        st = pc()
        rec = StreamRecorder(st)
        status = 0
        raw: Any = None
        try:
            resp = self.client.request(
                "POST",
                gen.path,
                data=cast(Any, gen.bodies[i]),  # bytes go out as they are
                stream=True,
                headers=gen.headers,
                name=gen.label,
            )
            status = resp.status_code
            raw = getattr(resp, "_response", None)
            if status == 200 and raw is not None:
                readline = raw.readline
                feed = rec.feed
                while True:
                    event = readline(SSE_SEP)
                    t = pc()
                    if not event:
                        rest = raw.read()  # a last event without the blank line
                        if rest.strip():
                            feed(rest, t)
                        break
                    if not feed(event, t):
                        break
                if rec.done:
                    raw.read()  # the end of the chunked body: the connection goes back to the pool
                else:
                    raw.release()
            else:
                rec.fail(_http_error(status, resp))
        except Exception as exc:
            rec.fail(f"{type(exc).__name__}: {exc}")
            if raw is not None:
                raw.release()
        record = rec.record(
            index,
            start=st - gen.perf_t0,
            prompt_tokens=gen.prompt_lens[i],
            queue_time=st - arrival if arrival else 0.0,
            status=status,
            worker=gen.node,
        )
        if gen.fire_events:
            self._fire(record)
        return record

    def _fire(self, r: RequestRecord) -> None:
        """TTFT, TPOT, ITL (each gap) and E2E as Locust request events, in milliseconds."""
        fire = self.environment.events.request.fire
        if not r.success:
            fire(
                request_type="SSE",
                name="E2E",
                response_time=r.latency * 1000,
                response_length=0,
                exception=RuntimeError(r.error),
                context={},
            )
            return
        n = r.output_tokens
        fire(request_type="SSE", name="TTFT", response_time=r.ttft * 1000, response_length=n)
        fire(request_type="SSE", name="E2E", response_time=r.latency * 1000, response_length=n)
        tpot = r.tpot
        if tpot is not None:
            fire(request_type="SSE", name="TPOT", response_time=tpot * 1000, response_length=n)
        for gap in r.itl:
            fire(request_type="SSE", name="ITL", response_time=gap * 1000, response_length=0)
