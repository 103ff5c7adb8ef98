"""
A test hook, not a feature: OCM_TEST_LOSS="SEED:FRACTION" makes ocm-client
drop that fraction of its own UDP datagrams, outgoing and incoming, chosen by
a random generator seeded with SEED (one per direction), so an end-to-end
test can run real processes over a lossy path without a proxy or root.
"""

from __future__ import annotations

import random
from typing import Mapping

from ocm.client.errors import UsageError

VARIABLE = "OCM_TEST_LOSS"


class Loss:
    """Seeded drop decisions, one stream per direction."""

    def __init__(self, seed: int, fraction: float) -> None:
        self.fraction = fraction
        self._out = random.Random(seed * 2)
        self._in = random.Random(seed * 2 + 1)
        self.dropped_out = 0
        self.dropped_in = 0

    def outgoing(self) -> bool:
        drop = self._out.random() < self.fraction
        self.dropped_out += drop
        return drop

    def incoming(self) -> bool:
        drop = self._in.random() < self.fraction
        self.dropped_in += drop
        return drop


def loss_from(environ: Mapping[str, str]) -> Loss | None:
    """The hook's setting, if any; a malformed one is a usage error."""
    value = environ.get(VARIABLE)
    if not value:
        return None
    seed, _, fraction = value.partition(":")
    try:
        loss = Loss(int(seed), float(fraction))
    except ValueError:
        raise UsageError(f"{VARIABLE}={value!r} is not SEED:FRACTION (e.g. 7:0.1667)")
    if not 0.0 <= loss.fraction < 1.0:
        raise UsageError(f"{VARIABLE}: the fraction must be at least 0 and below 1")
    return loss
