"""One log format for every Toka process; HTTP client chatter only when asked for.

httpx logs every request and Kopf every handler run at INFO: in an operator
that is a line per API call and per watch event, which buries what matters
(`--verbose` brings them back; request lines name objects, never credentials).
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure(*, verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    if not verbose:
        # kopf.objects logs every handler's success: a line per watch event.
        for noisy in ("httpx", "httpcore", "kopf.objects"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
