"""Locust entry: inferstack's streaming OpenAI user with vllm-bench-serve metrics.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:9000 --headless -u 32 -r 32 -t 2m \
        --endpoint chat --input-len 512 --output-len 128 --csv out/locust

TTFT, TPOT, ITL and E2E are recorded as Locust request events of type "SSE" (Locust's own
time for a stream stops at the response headers). The API key comes from --api-key or
INFERSTACK_BENCH_API_KEY. `inferstack bench` drives the same user with exact aggregates,
sweeps, charts and an HTML report; see docs/loadtest.md.
"""

from locust import events

from inferstack.loadtest.standalone import add_arguments, configure
from inferstack.loadtest.user import StreamUser

__all__ = ["StreamUser"]

events.init_command_line_parser.add_listener(add_arguments)
events.init.add_listener(configure)
