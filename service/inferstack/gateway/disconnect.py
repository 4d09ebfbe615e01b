"""Abort on client disconnect.

While the gateway waits on an engine, a watcher reads the ASGI receive channel; when the
client goes away it cancels the waiting task. The cancellation closes the upstream
connection, and vLLM aborts a request whose connection closed, freeing its slot and KV cache.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from starlette.types import Receive


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class DisconnectGuard:
    """``with DisconnectGuard(receive) as guard:`` cancels the block when the client leaves.

    After the block, ``guard.disconnected`` tells whether that happened; the caller catches
    :class:`asyncio.CancelledError` and calls :meth:`absorb` to tell a disconnect from a real
    cancellation (server shutdown), which it re-raises.
    """

    __slots__ = ("_active", "_task", "_watcher", "disconnected")

    def __init__(self, receive: Receive) -> None:
        self._task = asyncio.current_task()
        self._watcher = asyncio.ensure_future(_wait_disconnect(receive))
        self._watcher.add_done_callback(self._on_disconnect)
        self._active = True
        self.disconnected = False

    def _on_disconnect(self, watcher: asyncio.Future[None]) -> None:
        if watcher.cancelled() or watcher.exception() is not None or not self._active:
            return
        self.disconnected = True
        if self._task is not None:
            self._task.cancel()

    def __enter__(self) -> DisconnectGuard:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._active = False
        self._watcher.cancel()

    def absorb(self) -> bool:
        """Called on CancelledError: True (and un-cancels) when the client left."""
        if self.disconnected and self._task is not None:
            self._task.uncancel()
            return True
        return False
