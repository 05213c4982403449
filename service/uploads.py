"""An image the API decoded and checked (api.validation.decode_image), as the service stores it: a job's example image,
an evaluation's labelled image or a pool's unlabelled one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SubmittedImage:
    """An image the API decoded and checked: what is stored, and the row's facts about it."""

    class_name: str
    position: int
    filename: str | None
    content: bytes
    content_type: str
    width: int
    height: int
