"""Lame duck: how a worker leaves without resetting anyone's connection.

A worker told to stop (``systemctl reload``, stop, max_requests recycling) first stops accepting
connections, then for ``lame_duck_s`` keeps answering requests that arrive on its open
connections, each with ``Connection: close``, so clients (nginx's upstream keepalive pool too)
move to the new workers between two requests. Only then does the usual graceful shutdown close
idle connections and wait for the streams in flight. Without this, a client that sends on an
idle keep-alive connection just as the worker closes it gets a reset.
"""

from __future__ import annotations

CONNECTION_CLOSE = (b"connection", b"close")


class _State:
    active = False


state = _State()
