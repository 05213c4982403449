"""Resource ids: a prefix and a time-ordered ULID-like value (``job_01h...``), so that listings sort by id."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


class MonotonicIds:
    """ULID-like ids (48-bit milliseconds, then 80 random bits, Crockford base32) that sort in creation order within a
    process even inside one millisecond or when the wall clock steps back: such an id takes the previous one's
    time and its random part plus one (a monotonic ULID). Ids of two processes in the same millisecond are still
    unique (80 random bits) and each process's own ids keep their order."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last = 0  # the previous id's 128-bit value

    def new(self, prefix: str) -> str:
        with self._lock:
            value = (int(self._clock() * 1000) << 80) | secrets.randbits(80)
            if value >> 80 <= self._last >> 80:  # same millisecond, or the clock went back: just after the previous id
                value = self._last + 1
            self._last = value
        chars = []
        for _ in range(26):
            chars.append(_CROCKFORD[value & 31])
            value >>= 5
        return f"{prefix}_{''.join(reversed(chars))}"


_IDS = MonotonicIds()  # one sequence per process: no settings involved


def new_id(prefix: str) -> str:
    """A new time-ordered id (see MonotonicIds): listings sort by id, newest first."""
    return _IDS.new(prefix)


def is_id(value: str, prefix: str) -> bool:
    """Whether ``value`` has the form of ``new_id(prefix)`` (a cursor must be one)."""
    return re.fullmatch(f"{re.escape(prefix)}_[{_CROCKFORD}]{{26}}", value) is not None
