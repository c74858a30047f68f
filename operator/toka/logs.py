"""One log format for every Toka process; HTTP client chatter only when asked for.

httpx logs every request at INFO: in an operator that is a line per API
call, which buries what matters (and request lines name objects, never
credentials, so debug mode stays safe).
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure(*, verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    if not verbose:
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
