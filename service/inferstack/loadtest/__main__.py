"""``python -m inferstack.loadtest``, what ``inferstack bench`` runs: gevent first, then the CLI."""

from __future__ import annotations

import sys

try:
    from gevent import monkey
except ImportError:  # pragma: no cover - depends on the installed extras
    sys.stderr.write(
        "inferstack bench needs the loadtest extra: pip install 'inferstack[loadtest]'\n"
    )
    sys.exit(2)

monkey.patch_all()

from inferstack.loadtest.cli import main  # noqa: E402

main()
