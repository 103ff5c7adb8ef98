"""
The daemon under tracemalloc, for C{ocm-bench --soak --tracemalloc}:
C{python -m ocm.bench.traced DIR <twist arguments>} runs C{python -m twisted}
with allocations traced by line, and writes a snapshot to DIR each time the
process gets SIGUSR2 (snap-0001.tracemalloc, ...), to be compared later.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc


def main() -> None:
    out = sys.argv.pop(1)
    tracemalloc.start(1)
    taken = 0

    def snapshot(_signum: int, _frame: object) -> None:
        nonlocal taken
        taken += 1
        snap = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),)
        )
        snap.dump(os.path.join(out, f"snap-{taken:04d}.tracemalloc"))

    signal.signal(signal.SIGUSR2, snapshot)
    from twisted.application.twist._twist import Twist

    sys.exit(Twist.main())


if __name__ == "__main__":
    main()
