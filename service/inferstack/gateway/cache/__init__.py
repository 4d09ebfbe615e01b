"""The gateway's response cache: deterministic requests only, per tenant, on aiocache
(memory or Redis), with single-flight and pass-through when the cache fails.

``keys`` decides what is cacheable and its key, ``entry`` what is stored, ``store`` the
backend behind timeouts, ``singleflight`` the one-upstream-call rule, ``replay`` answers
from an entry, ``responses`` puts them in the request path.
"""
