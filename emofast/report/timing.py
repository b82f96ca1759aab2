"""Stage timings for a report's "stage_s": seconds per named stage, summed when a name repeats."""
from __future__ import annotations

import time
from typing import Any, Callable


class Stopwatch:
    """    clock = Stopwatch(); dirs = clock.run("directions", sev_directions, model, skels)
    clock.seconds   # {"directions": 12.3}"""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """fn(*args, **kwargs), timed under `name`."""
        t = time.perf_counter()
        value = fn(*args, **kwargs)
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 1)
        return value
