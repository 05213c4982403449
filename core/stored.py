"""Teacher passes kept as stored objects: one mechanism for every cache of the teacher's embeddings (sample banks,
pools' embeddings) and below them all, so that nothing here imports the stages that use it.

``CachedViews``: images, a fixed set of augmented views of each (their geometry, ``core.augment.view_params``, so a view
is rebuilt exactly) and the teacher's unit embeddings of each image and view. A job's class logits of any of them are
``logit_scale * embeddings @ classifier.T``: the teacher runs only on what a cache lacks.

A stored object is a magic line, a JSON header (its key, the payload's size and sha256) and a torch payload of plain
tensors: a damaged, partial or foreign object is refused (``StoredObjectDamagedError``) and built again, never used.
Where the bytes live is the caller's (``ObjectStore``: a service's storage, a local folder).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch

EMBED_BATCH = 256  # images a teacher pass embeds at once when caching views: 0.36 ms an image on 2 cores against 0.62 at 1,024
# (done, total) units of a long step, after each; the callback may raise to cancel.
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class CachedViews:
    """Images, their fixed views and the teacher's embeddings of both (see the module's docstring)."""

    images: torch.Tensor  # (N, 3, S, S) uint8: the images as the student sees them (the embeddings may be of a larger copy)
    view_params: torch.Tensor  # (N, V, VIEW_PARAMS) float32: each view's geometry (core.augment.apply_views)
    embeddings: torch.Tensor  # (N, 1 + V, D) float32 or float16: the teacher's unit embeddings of the image (0) and its views

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def views(self) -> int:
        return int(self.view_params.shape[1])

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """Images ``index`` as float pixels in [0, 1]."""
        return self.images[index].float() / 255.0

    def logits(self, classifier: torch.Tensor, logit_scale: float, index: torch.Tensor, view: torch.Tensor | int = 0) -> torch.Tensor:
        """The teacher's class logits of images ``index`` (view 0: the image itself; 1..V: its views)."""
        embeddings = self.embeddings[index, view].to(classifier.device, classifier.dtype)
        return logit_scale * embeddings @ classifier.T

    def subset(self, index: torch.Tensor) -> CachedViews:
        """Images ``index`` with their views and embeddings (a pool's distilled-on or held-out part)."""
        return CachedViews(self.images[index], self.view_params[index], self.embeddings[index])


class StoredObjectDamagedError(ValueError):
    """Stored bytes that are not a whole object of the expected key (truncated, altered, or another object's)."""

    code = "stored_object_damaged"


def pack(magic: bytes, key: dict[str, object], tensors: dict[str, torch.Tensor]) -> bytes:
    """One stored object: ``magic``, a header with ``key`` and the payload's size and sha256, then the payload."""
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    payload = buffer.getvalue()
    header = json.dumps({"key": key, "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest()}).encode()
    return magic + len(header).to_bytes(4, "big") + header + payload


def unpack(data: bytes, magic: bytes, damaged: type[StoredObjectDamagedError]) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    """The key and tensors of a stored object, checked whole (its header, its payload's sha256 and size); ``damaged``
    (a subclass with the object's own code) otherwise. The caller compares the key with the one it asked for."""
    what = magic.decode(errors="replace").strip()
    try:
        if not data.startswith(magic):
            raise damaged(f"not a {what} (no header)")
        start = len(magic) + 4
        length = int.from_bytes(data[len(magic) : start], "big")
        header = json.loads(data[start : start + length])
        payload = data[start + length :]
        key = dict(header["key"])
    except StoredObjectDamagedError:
        raise
    except Exception as exc:
        raise damaged(f"the {what}'s header is unreadable: {exc}") from None
    if len(payload) != header["payload_bytes"] or hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise damaged(f"the {what}'s payload does not match its recorded sha256 (damaged or partly written)")
    return key, torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class ObjectStore:
    """Where cached objects are kept (a service's storage, a local folder): the caller's two callbacks, as with
    checkpoints."""

    load: Callable[[str], bytes | None]  # the bytes stored under a key, or None
    save: Callable[[str, bytes], None]  # store bytes under a key, whole or not at all (an atomic put)
    exists: Callable[[str], bool] | None = None  # whether a key is stored, without reading it (an estimate asks)


class Storage(Protocol):
    """What ``storage_object_store`` needs of a storage (service.storage.Storage has it)."""

    def exists(self, key: str) -> bool: ...
    def read(self, key: str) -> bytes: ...
    def put(self, key: str, data: bytes) -> object: ...


def storage_object_store(storage: Storage) -> ObjectStore:
    """Objects of a storage (a local folder or S3), each written whole by the storage's atomic put."""
    return ObjectStore(lambda key: storage.read(key) if storage.exists(key) else None, storage.put, storage.exists)


BUILT, REUSED, REBUILT = "built", "reused", "rebuilt"
T = TypeVar("T")


@dataclass(frozen=True)
class Obtained(Generic[T]):
    value: T
    status: str  # built (none was stored), reused, rebuilt (the stored one was damaged or another's)
    seconds: float  # to load or build it
    reason: str | None = None  # why a stored object was rebuilt


def obtain(
    store: ObjectStore | None, storage_key: str, parse: Callable[[bytes], T], build: Callable[[], T], encode: Callable[[T], bytes]
) -> Obtained[T]:
    """The object stored under ``storage_key`` when ``parse`` accepts it whole, else ``build`` it now and store it
    (without a store: built, kept nowhere)."""
    began = time.monotonic()
    data = store.load(storage_key) if store is not None else None
    reason = None
    if data is not None:
        try:
            return Obtained(parse(data), REUSED, time.monotonic() - began)
        except StoredObjectDamagedError as exc:
            reason = str(exc)
    value = build()
    if store is not None:
        store.save(storage_key, encode(value))
    return Obtained(value, BUILT if reason is None else REBUILT, time.monotonic() - began, reason)
