"""The Gunicorn worker class: Uvicorn on uvloop + httptools, no access log of its own, and a
lame-duck period before the graceful shutdown (see lameduck.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

from gunicorn.arbiter import Arbiter
from uvicorn.server import Server
from uvicorn_worker import UvicornWorker

from inferstack.gateway import lameduck

LAME_DUCK_ENV = "INFERSTACK_LAME_DUCK_S"


class LameDuckServer(Server):
    lame_duck_s = 0.0

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.lame_duck_s > 0 and self.server_state.connections:
            for server in self.servers:
                server.close()  # new connections go to the other (new) workers
            lameduck.state.active = True
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.lame_duck_s
            while self.server_state.connections and loop.time() < deadline:  # noqa: ASYNC110 (uvicorn owns the set)
                await asyncio.sleep(0.02)
        await super().shutdown(sockets)


class GatewayWorker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: dict[str, Any] = {  # noqa: RUF012 (read by the base class)
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,  # the gateway writes its own JSON access log with key ids
        "server_header": False,
    }

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        server = LameDuckServer(config=self.config)
        server.lame_duck_s = float(os.environ.get(LAME_DUCK_ENV, "0"))
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
