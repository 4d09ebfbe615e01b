"""Locust-based capacity tests with ``vllm bench serve`` metrics (``inferstack bench``).

The pure parts (metrics, datasets, arrivals, sweep rules, result block, timeline) import
neither gevent nor Locust; ``user``, ``control`` and ``runner`` run only in a gevent-patched
process started through ``python -m inferstack.loadtest``.
"""
