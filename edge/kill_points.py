"""Kill points for the durability tests: the agent SIGKILLs itself at a named step.

``TAGWAY_TEST_KILL_AT=STEP[:N]`` makes the N-th time (the first by default) this process reaches
STEP its last: ``os.kill(os.getpid(), SIGKILL)``, as a power cut or the OOM killer would, with no
cleanup, no flush and no log line. Only tests set it (`tests/edge/test_kill_steps.py` kills the
real agent at each step of the batch exchange and checks that every accepted reading is stored
exactly once); unset, a step costs one environment lookup.

The steps of the batch exchange (`edge.uplink.Uplink.send_once`), counted over the batches that
carry readings (a batch of events alone, such as the shadow report at start, is not counted):

    leased      chunks leased from the outbox, no seq taken yet
    built       the batch built under its seq (the seq state saved), nothing sent
    answered    the cloud's 2xx received, the lease not yet acked
    acked       the chunks acked (deleted from the outbox)

The two steps in between (the request on the wire but not committed; committed but the answer
not received) happen in the cloud: the test holds the request there and kills the agent from
outside.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Final

ENV: Final = "TAGWAY_TEST_KILL_AT"
STEPS: Final = ("leased", "built", "answered", "acked")

_reached: Counter[str] = Counter()


def kill_point(step: str) -> None:
    """SIGKILL this process if ``TAGWAY_TEST_KILL_AT`` names `step` and this is its N-th time."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != step:
        return
    _reached[step] += 1
    if _reached[step] >= int(nth or "1"):
        os.kill(os.getpid(), signal.SIGKILL)
