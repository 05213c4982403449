"""Device selection: CUDA when asked for or available, never a silent fallback to the CPU."""

from __future__ import annotations

import torch

from core.spec import requested_device


class DeviceUnavailableError(RuntimeError):
    """The caller asked for a device this machine does not have."""

    code = "device_unavailable"


def resolve_device(requested: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; an explicit ``cuda`` without CUDA raises."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {str(requested)!r} was requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {str(requested)!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif device.type != "cpu":
        raise DeviceUnavailableError(f"unsupported device {str(requested)!r}; use cpu, cuda, cuda:N or auto")
    return device


def job_device(spec_device: str, worker_device: str) -> torch.device:
    """The device a job runs on: the spec's ``device`` when it names one, else the worker's setting (core.spec's
    ``requested_device``). A device this machine lacks (a job asking for ``cuda`` on a CPU-only worker) raises
    DeviceUnavailableError, code ``device_unavailable``, so the job fails saying so; it never runs on the CPU instead."""
    return resolve_device(requested_device(spec_device, worker_device))
