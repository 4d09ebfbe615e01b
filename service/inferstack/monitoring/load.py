"""A short, bounded load through a gateway that touches every metric the dashboards and
rules read: plain and streaming completions, client errors, a stream the client leaves, a
concurrent burst (429 when the gateway's admission is small), repeated deterministic
requests (response-cache traffic).

Used by the monitoring tests and, against the lab, by ``inferstack monitoring load``. Every
loop is bounded; requests go only to the URL given.
"""

from __future__ import annotations

import collections
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

CLIENT_CLOSED = 499  # nginx's code for a client that went away, as the gateway logs it
ABANDON_ATTEMPTS = 8


def _post(url: str, body: object, key: str, timeout: float, *, leave: bool = False) -> int:
    """POST and read the whole answer; its status, or 0 when the connection failed.

    With ``leave``, read only the first byte and go away (a client disconnect, which the
    gateway logs as status 499).
    """
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            if leave:
                r.read(1)
                return CLIENT_CLOSED
            while r.read(4096):  # streams: read every event as it comes
                pass
            return int(r.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)
    except OSError:
        return 0  # connection failed or timed out


def run_load(
    gateway_url: str,
    api_key: str,
    model: str,
    rounds: int = 3,
    burst: int = 12,
    max_tokens: int = 8,
    timeout: float = 30.0,
) -> dict[int, int]:
    """Send the mix ``rounds`` times; returns how many answers had each status."""
    chat = gateway_url.rstrip("/") + "/v1/chat/completions"
    completions = gateway_url.rstrip("/") + "/v1/completions"
    messages = [{"role": "user", "content": "Say something about monitoring."}]
    plain = {"model": model, "messages": messages, "max_tokens": max_tokens}
    stream = {**plain, "stream": True, "stream_options": {"include_usage": True}}
    text_stream = {"model": model, "prompt": "count", "max_tokens": max_tokens, "stream": True}
    cacheable = {**plain, "temperature": 0, "seed": 7}
    long_stream = {**stream, "max_tokens": 256}
    statuses: collections.Counter[int] = collections.Counter()
    with ThreadPoolExecutor(max_workers=burst) as pool:
        for _ in range(rounds):
            calls = [
                (chat, plain, api_key),
                (chat, stream, api_key),
                (completions, text_stream, api_key),
                (chat, cacheable, api_key),
                (chat, cacheable, api_key),
                (chat, plain, "sk-not-a-key"),  # 401
                (chat, {**plain, "model": "no-such-model"}, api_key),  # 404
                (chat, {"model": model, "messages": "not a list"}, api_key),  # 400
            ]
            for url, body, key in calls:
                statuses[_post(url, body, key, timeout)] += 1
            # Engines that inject errors may refuse the stream before it starts: try again
            # (bounded) so that every round leaves one stream behind.
            for _ in range(ABANDON_ATTEMPTS):
                status = _post(chat, long_stream, api_key, timeout, leave=True)
                statuses[status] += 1
                if status == CLIENT_CLOSED:
                    break
            # A burst of concurrent streams: 429 where admission is smaller than the burst.
            futures = [pool.submit(_post, chat, stream, api_key, timeout) for _ in range(burst)]
            for f in futures:
                statuses[f.result()] += 1
    return dict(statuses)
