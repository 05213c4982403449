"""What the API process needs to answer predictions itself: a bounded cache of students' onnxruntime sessions (keyed
by their ONNX file's sha256) and a per-tenant rate of predicted images. torch-free: clipforge_runtime runs the file."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from clipforge_runtime import Student
from service.errors import ServiceError


class StudentSessions:
    """At most ``capacity`` loaded students, least recently used out first; loading happens outside the lock."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._students: OrderedDict[str, Student] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, sha256: str, load: Callable[[], bytes]) -> Student:
        with self._lock:
            if sha256 in self._students:
                self._students.move_to_end(sha256)
                return self._students[sha256]
        student = Student(load(), threads=1)  # one thread a request: the API serves many at once
        with self._lock:
            self._students[sha256] = student
            self._students.move_to_end(sha256)
            while len(self._students) > self.capacity:
                self._students.popitem(last=False)
        return student

    def __len__(self) -> int:
        return len(self._students)


class PredictionRate:
    """Images predicted per tenant over the last minute; a request that would pass ``per_minute`` is refused (429)."""

    WINDOW_S = 60.0

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self.clock = per_minute, clock
        self._recent: dict[str, deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def take(self, tenant: str | None, images: int) -> None:
        now = self.clock()
        with self._lock:
            recent = self._recent.setdefault(tenant or "", deque())
            while recent and recent[0][0] <= now - self.WINDOW_S:
                recent.popleft()
            used = sum(n for _, n in recent)
            if used + images > self.per_minute:
                wait = math.ceil(recent[0][0] + self.WINDOW_S - now) if recent else math.ceil(self.WINDOW_S)
                raise ServiceError(
                    "rate_limited",
                    f"{used} images predicted in the last minute; at most {self.per_minute} per tenant. Retry in {wait} s.",
                    429,
                    {"limit": self.per_minute, "used": used},
                    headers={"Retry-After": str(max(1, wait))},
                )
            recent.append((now, images))
