"""Engine simulators and the Gunicorn gateway as local processes on loopback.

Used by ``inferstack local``, the tests and the benchmarks. Every process is tracked by PID
and ended by that PID.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PY = sys.executable
SIM_MODEL = "sim-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a unix socket (a gateway bound to ``unix:PATH``)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def _get_status(url: str, unix_socket: str | None) -> int:
    if unix_socket is None:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
    conn = UnixHTTPConnection(unix_socket, timeout=1.0)
    try:
        conn.request("GET", urllib.parse.urlsplit(url).path)
        return conn.getresponse().status
    finally:
        conn.close()


def wait_http(
    url: str,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    status: int = 200,
    unix_socket: str | None = None,
) -> None:
    """Until GET ``url`` answers ``status`` (over ``unix_socket`` when given)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            last = _get_status(url, unix_socket)
            if last == status:
                return
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s (last: {last})")


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log_path: Path
    url: str
    port: int
    args: list[str] = field(default_factory=list)
    unix_socket: str | None = None
    """Set for a gateway bound to a unix socket (then ``url`` is only a base for paths)."""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)


class Processes:
    """Starts and tracks the processes of one test (or module)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def _spawn(
        self,
        argv: list[str],
        env: dict[str, str],
        name: str,
        port: int,
        url: str,
        unix_socket: str | None = None,
    ) -> Proc:
        log_path = self.workdir / f"{name}-{port or os.path.basename(unix_socket or '')}.log"
        log_file = log_path.open("wb")
        popen = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
        proc = Proc(popen, log_path, url, port, argv, unix_socket)
        self.procs.append(proc)
        return proc

    def sim(
        self,
        *args: str,
        port: int | None = None,
        model: str | None = SIM_MODEL,
        wait: bool = True,
    ) -> Proc:
        """A simulator serving ``model`` (None: the profile's own served model name)."""
        port = port or free_port()
        argv = [PY, "-m", "inferstack.sim", "--port", str(port), *args]
        if model is not None:
            argv += ["--model", model]
        if not any(a == "--profile" for a in args):
            argv += ["--profile", "instant"]
        proc = self._spawn(argv, {}, "sim", port, f"http://127.0.0.1:{port}")
        if wait:
            wait_http(proc.url + "/health", proc=proc.popen)
        return proc

    def gateway(
        self,
        backends: list[Proc] | list[str],
        workers: int = 2,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        keys: dict[str, str] | None = None,
        port: int | None = None,
        unix_socket: str | None = None,
    ) -> Proc:
        """Gunicorn + Uvicorn workers; ``keys`` maps key id -> plain key (none: no auth).

        Bound to ``unix_socket`` when given (``port`` is then 0), else to 127.0.0.1:``port``.
        """
        port = 0 if unix_socket else (port or free_port())
        urls = [b.url if isinstance(b, Proc) else b for b in backends]
        settings = {
            "INFERSTACK_BIND": f"unix:{unix_socket}" if unix_socket else f"127.0.0.1:{port}",
            "INFERSTACK_WORKERS": str(workers),
            "INFERSTACK_BACKENDS": json.dumps(urls),
            "INFERSTACK_API_KEYS": json.dumps(
                [
                    {"id": kid, "sha256": hashlib.sha256(key.encode()).hexdigest()}
                    for kid, key in (keys or {}).items()
                ]
            ),
            "INFERSTACK_AUTH_ENABLED": "true" if keys else "false",
            "INFERSTACK_HEALTH_INTERVAL_S": "0.5",
            "INFERSTACK_EJECT_S": "1",
            "INFERSTACK_METRICS_DIR": tempfile.mkdtemp(prefix="metrics-", dir=self.workdir),
            **(env or {}),
        }
        argv = [PY, "-m", "inferstack", "gateway"]
        url = "http://localhost" if unix_socket else f"http://127.0.0.1:{port}"
        proc = self._spawn(argv, settings, "gateway", port, url, unix_socket)
        wait_http(proc.url + "/health", proc=proc.popen, unix_socket=unix_socket)
        _wait_workers(proc, workers)
        if wait_ready:
            wait_http(proc.url + "/ready", proc=proc.popen, unix_socket=unix_socket)
        return proc

    def redis(self, *args: str, port: int | None = None, conf: Path | None = None) -> Proc:
        """Debian's redis-server on loopback, no persistence (``conf``: start from that file,
        ``args`` still win). ``url`` is its ``redis://`` URL."""
        port = port or free_port()
        workdir = Path(tempfile.mkdtemp(prefix="redis-", dir=self.workdir))
        argv = ["redis-server"]
        if conf is not None:
            argv.append(str(conf))
        else:
            argv += ["--save", "", "--appendonly", "no", "--port", str(port)]
            argv += ["--bind", "127.0.0.1", "--dir", str(workdir)]
        argv += [*args]
        proc = self._spawn(argv, {}, "redis", port, f"redis://127.0.0.1:{port}/0")
        if not wait_until(lambda: redis_up(port) or proc.popen.poll() is not None, 10):
            raise TimeoutError(f"redis-server did not answer on port {port}:\n{proc.log()}")
        if proc.popen.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{proc.log()}")
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def redis_command(port: int, *args: str, host: str = "127.0.0.1") -> bytes:
    """One command in RESP to a Redis server; its raw reply (b"" when unreachable)."""
    request = f"*{len(args)}\r\n".encode()
    for a in args:
        data = a.encode()
        request += b"$%d\r\n%s\r\n" % (len(data), data)
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(request)
            return s.recv(65536)
    except OSError:
        return b""


def redis_ping(port: int) -> bool:
    return redis_command(port, "PING") == b"+PONG\r\n"


def redis_up(port: int) -> bool:
    """Answering, with or without a password set."""
    return redis_command(port, "PING").startswith((b"+PONG", b"-NOAUTH"))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` every 20 ms until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def _wait_workers(proc: Proc, workers: int, timeout: float = 30.0) -> None:
    """Until every worker has logged its start-up (else the first takes all connections)."""
    deadline = time.monotonic() + timeout
    while proc.log().count("Application startup complete") < workers:
        if time.monotonic() > deadline or proc.popen.poll() is not None:
            raise RuntimeError(f"gateway workers did not all start:\n{proc.log()[-2000:]}")
        time.sleep(0.05)


@contextlib.contextmanager
def processes(tmp: Path, cls: type[Processes] = Processes) -> Iterator[Processes]:
    """Started processes are stopped on exit, also when this process gets SIGTERM."""
    ps = cls(tmp)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_term)
    try:
        yield ps
    finally:
        ps.stop_all()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run_local(engines: int, profile: str, port: int, workers: int, self_test: bool) -> int:
    """``inferstack local``: simulators + gateway in the foreground until Ctrl-C."""
    key = "sk-local-" + os.urandom(12).hex()
    workdir = Path(tempfile.mkdtemp(prefix="inferstack-local-"))
    with processes(workdir) as ps:
        sims = [ps.sim("--profile", profile, model=None) for _ in range(engines)]
        gw = ps.gateway(sims, workers=workers, keys={"local": key}, port=port)
        model = _served_model(sims[0].url)
        curl = (
            f"curl -sS {gw.url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' "
            f'-d \'{{"model": "{model}", "max_tokens": 32, '
            '"messages": [{"role": "user", "content": "Hello!"}]}\''
        )
        print(f"gateway  {gw.url}  ({workers} workers, logs in {workdir})")
        for s in sims:
            print(f"engine   {s.url}  (simulated, profile {profile}, model {model})")
        print(f"api key  {key}\n\ntry:\n  {curl}\n")
        if self_test:
            return _chat_once(gw.url, key, model)
        print("Ctrl-C stops everything.")
        try:
            while all(p.popen.poll() is None for p in ps.procs):
                time.sleep(0.5)
        except KeyboardInterrupt:
            return 0
        dead = [p for p in ps.procs if p.popen.poll() is not None]
        print(f"a process exited: {dead[0].args} (log: {dead[0].log_path})", file=sys.stderr)
        return 1


def _served_model(engine_url: str) -> str:
    with urllib.request.urlopen(engine_url + "/v1/models", timeout=5) as r:
        return str(json.load(r)["data"][0]["id"])


def _chat_once(gw_url: str, key: str, model: str) -> int:
    body = json.dumps(
        {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Hello!"}]}
    ).encode()
    req = urllib.request.Request(
        gw_url + "/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = json.load(r)
    print(json.dumps(answer, indent=2))
    return 0 if answer["choices"][0]["message"]["content"] else 1
