"""``ClipforgeClient``: every API call as a method returning the API's pydantic models; errors raise ``ApiError``."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from api.schemas import (
    ArtifactList,
    Evaluation,
    EvaluationList,
    Event,
    EventPage,
    Health,
    Job,
    JobPage,
    Pool,
    PoolList,
    StudentList,
    TeacherList,
)

DEFAULT_URL = "http://127.0.0.1:8000"
ImageInput = str | Path | bytes


def default_url() -> str:
    return os.environ.get("CLIPFORGE_URL", DEFAULT_URL)


class ApiError(Exception):
    """An error answer (or no answer) from the API: ``code`` is machine-readable, ``status`` the HTTP status (0: none)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


class JobFailed(ApiError):
    """``wait`` saw the job end failed or cancelled."""

    def __init__(self, job: Job) -> None:
        code = job.error.code if job.error else job.status
        message = job.error.message if job.error and job.error.message else f"job {job.id} {job.status}"
        super().__init__(0, code, message or "", {"job_id": job.id, "status": job.status})
        self.job = job


# An upload's answer waits for the service to decode and check every image it holds (a 50,000-photo pool's zip: minutes),
# so its read timeout is this, not the client's default for other calls.
UPLOAD_READ_TIMEOUT = 1800.0


class ClipforgeClient:
    def __init__(
        self, url: str | None = None, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None, api_key: str | None = None
    ) -> None:
        self.url = (url or default_url()).rstrip("/")
        api_key = api_key or os.environ.get("CLIPFORGE_API_KEY")  # `clipforge keys create`; none: an open, local service
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport, headers=headers)

    def __enter__(self) -> ClipforgeClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing ------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if "files" in kwargs and "timeout" not in kwargs:  # the service checks every image before it answers
            kwargs["timeout"] = httpx.Timeout(self._http.timeout.connect, read=max(self._http.timeout.read or 0.0, UPLOAD_READ_TIMEOUT))
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, "unreachable", f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    # -- jobs ----------------------------------------------------------------------------

    def submit(
        self,
        spec: Mapping[str, Any],
        *,
        images: Mapping[str, Sequence[ImageInput]] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a job; ``images`` maps class names to example images (paths or bytes), sent as multipart."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if not images:
            return Job.model_validate(self._request("POST", "/v1/jobs", json=dict(spec), headers=headers).json())
        files = _image_parts(images)
        response = self._request("POST", "/v1/jobs", data={"spec": json.dumps(dict(spec))}, files=files, headers=headers)
        return Job.model_validate(response.json())

    def list_jobs(self, *, status: str | None = None, after: str | None = None, limit: int = 20) -> JobPage:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if after:
            params["after"] = after
        return JobPage.model_validate(self._request("GET", "/v1/jobs", params=params).json())

    def iter_jobs(self, *, status: str | None = None, page_size: int = 50) -> Iterator[Job]:
        after = None
        while True:
            page = self.list_jobs(status=status, after=after, limit=page_size)
            yield from page.data
            if not page.has_more:
                return
            after = page.next_after

    def get_job(self, job_id: str) -> Job:
        return Job.model_validate(self._request("GET", f"/v1/jobs/{job_id}").json())

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self._request("POST", f"/v1/jobs/{job_id}/cancel").json())

    def delete(self, job_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}")

    def events(self, job_id: str, *, after: int | None = None, limit: int = 100) -> EventPage:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        return EventPage.model_validate(self._request("GET", f"/v1/jobs/{job_id}/events", params=params).json())

    def iter_events(self, job_id: str, *, after: int | None = None) -> Iterator[Event]:
        while True:
            page = self.events(job_id, after=after, limit=500)
            yield from page.data
            if not page.has_more:
                return
            after = page.next_after

    def follow_events(self, job_id: str, *, after: int | None = None, reconnects: int = 5) -> Iterator[Event]:
        """Every event of the job as it happens (Server-Sent Events), from the first after ``after``, until the job
        ends. A dropped connection is resumed where it stopped (Last-Event-ID), up to ``reconnects`` times in a row."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(after)} if after is not None else {}
            try:
                with connect_sse(self._http, "GET", f"/v1/jobs/{job_id}/events", params={"stream": "true"}, headers=headers,
                                 timeout=httpx.Timeout(self._http.timeout.connect, read=None)) as source:  # fmt: skip
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise _error_from(source.response)
                    for message in source.iter_sse():
                        failures = 0
                        if message.event == "end":
                            return
                        event = Event.model_validate_json(message.data)
                        after = event.id
                        yield event
                return  # the server closed the stream without an end event: nothing more will come
            except (httpx.TransportError, SSEError) as exc:
                failures += 1
                if failures > reconnects:
                    raise ApiError(0, "unreachable", f"the event stream of {job_id} at {self.url} broke: {exc}") from exc
                time.sleep(min(5.0, 0.5 * 2**failures))

    def wait(
        self,
        job_id: str,
        *,
        poll_seconds: float = 0.5,
        timeout: float | None = None,
        on_update: Callable[[Job], None] | None = None,
        raise_on_failure: bool = True,
    ) -> Job:
        """Poll until the job ends; ``JobFailed`` when it failed or was cancelled (unless ``raise_on_failure`` is off)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job.finished:
                if raise_on_failure and job.status != "succeeded":
                    raise JobFailed(job)
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(0, "wait_timeout", f"job {job_id} still {job.status} after {timeout} s")
            time.sleep(poll_seconds)

    # -- evaluations ---------------------------------------------------------------------

    def evaluate(
        self, job_id: str, *, images: Mapping[str, Sequence[ImageInput]] | None = None, archive: str | Path | bytes | None = None
    ) -> Evaluation:
        """Score a succeeded job's student and teacher on labelled images: ``images`` maps class names to images (paths
        or bytes), ``archive`` is a zip with a folder per class; either or both."""
        files = _image_parts(images or {})
        if archive is not None:
            content = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
            files.append(("archive", ("images.zip", content, "application/zip")))
        if not files:
            raise ValueError("pass images or an archive")
        return Evaluation.model_validate(self._request("POST", f"/v1/jobs/{job_id}/evaluations", files=files).json())

    def evaluations(self, job_id: str) -> EvaluationList:
        return EvaluationList.model_validate(self._request("GET", f"/v1/jobs/{job_id}/evaluations").json())

    def get_evaluation(self, job_id: str, evaluation_id: str) -> Evaluation:
        return Evaluation.model_validate(self._request("GET", f"/v1/jobs/{job_id}/evaluations/{evaluation_id}").json())

    def wait_evaluation(self, job_id: str, evaluation_id: str, *, poll_seconds: float = 0.5, timeout: float | None = None) -> Evaluation:
        """Poll until the evaluation ends (succeeded or failed: look at ``status`` and ``error``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            evaluation = self.get_evaluation(job_id, evaluation_id)
            if evaluation.finished:
                return evaluation
            if deadline is not None and time.monotonic() > deadline:
                raise ApiError(0, "wait_timeout", f"evaluation {evaluation_id} still {evaluation.status} after {timeout} s")
            time.sleep(poll_seconds)

    def delete_evaluation(self, job_id: str, evaluation_id: str) -> None:
        self._request("DELETE", f"/v1/jobs/{job_id}/evaluations/{evaluation_id}")

    def download_evaluation_artifact(self, job_id: str, evaluation_id: str, name: str, dest: str | Path) -> Path:
        return self._download(f"/v1/jobs/{job_id}/evaluations/{evaluation_id}/artifacts/{name}", name, dest)

    # -- image pools ---------------------------------------------------------------------

    def create_pool(
        self,
        *,
        images: Sequence[ImageInput] = (),
        archive: str | Path | bytes | None = None,
        name: str | None = None,
        teacher: str | None = None,
        views: int | None = None,
    ) -> Pool:
        """A pool of unlabelled images from your domain: ``images`` (paths or bytes) and/or ``archive`` (a zip of images
        in any layout); a job distils on it with ``"synthesis": {"pool": pool.id}``. With ``teacher`` (and ``views``, the
        jobs' ``synthesis.pool_views``), a worker embeds the pool with that teacher now: ``pool.embeddings``."""
        files = [("images", _file_part(item, index)) for index, item in enumerate(images)]
        if archive is not None:
            content = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
            files.append(("archive", ("images.zip", content, "application/zip")))
        if not files:
            raise ValueError("pass images or an archive")
        fields = {"name": name, "teacher": teacher, "views": None if views is None else str(views)}
        data = {key: value for key, value in fields.items() if value} or None
        return Pool.model_validate(self._request("POST", "/v1/pools", files=files, data=data).json())

    def pools(self) -> PoolList:
        return PoolList.model_validate(self._request("GET", "/v1/pools").json())

    def get_pool(self, pool_id: str) -> Pool:
        return Pool.model_validate(self._request("GET", f"/v1/pools/{pool_id}").json())

    def delete_pool(self, pool_id: str) -> None:
        self._request("DELETE", f"/v1/pools/{pool_id}")

    def download_pool_thumbnails(self, pool_id: str, dest: str | Path) -> Path:
        return self._download(f"/v1/pools/{pool_id}/thumbnails.png", "thumbnails.png", dest)

    # -- artifacts -----------------------------------------------------------------------

    def artifacts(self, job_id: str) -> ArtifactList:
        return ArtifactList.model_validate(self._request("GET", f"/v1/jobs/{job_id}/artifacts").json())

    def download(self, job_id: str, name: str, dest: str | Path) -> Path:
        """Stream an artifact to ``dest`` (a file, or a folder for it), checking length and sha256; written whole or not at all."""
        return self._download(f"/v1/jobs/{job_id}/artifacts/{name}", name, dest)

    def _download(self, path: str, name: str, dest: str | Path) -> Path:
        dest = Path(dest)
        target = dest / name if dest.is_dir() else dest
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")
        digest, size = hashlib.sha256(), 0
        try:
            # The API may redirect to its object store (presigned downloads): httpx drops the API key on the way
            # there, and the sha256 comes from the API's redirect, since the store's answer does not carry it.
            with self._http.stream("GET", path, follow_redirects=True) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                expected_sha = next(
                    (hop.headers["x-checksum-sha256"] for hop in (response, *response.history) if "x-checksum-sha256" in hop.headers), None
                )
                expected_size = int(response.headers.get("content-length", -1))
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            if (expected_sha and digest.hexdigest() != expected_sha) or (expected_size >= 0 and size != expected_size):
                raise ApiError(
                    0,
                    "checksum_mismatch",
                    f"{name}: got {size} bytes, sha256 {digest.hexdigest()}; expected {expected_size}, {expected_sha}",
                )
            partial.replace(target)
        except httpx.TransportError as exc:
            raise ApiError(0, "unreachable", f"download of {name} from {self.url} failed: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return target

    # -- catalogue and health ------------------------------------------------------------

    def teachers(self) -> TeacherList:
        return TeacherList.model_validate(self._request("GET", "/v1/teachers").json())

    def students(self) -> StudentList:
        return StudentList.model_validate(self._request("GET", "/v1/students").json())

    def health(self) -> Health:
        return Health.model_validate(self._request("GET", "/healthz").json())

    def ready(self) -> Health:
        return Health.model_validate(self._request("GET", "/readyz").json())


def _file_part(item: ImageInput, index: int) -> tuple[str, bytes, str]:
    """One image as a multipart file: its file name (or its index, for bytes) and content."""
    if isinstance(item, bytes):
        return f"{index}", item, "application/octet-stream"
    path = Path(item)
    return path.name, path.read_bytes(), "application/octet-stream"


def _image_parts(images: Mapping[str, Sequence[ImageInput]]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart file parts named ``images[CLASS]``."""
    return [(f"images[{class_name}]", _file_part(item, index)) for class_name, items in images.items() for index, item in enumerate(items)]


def _error_from(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, error["code"], error["message"], error.get("details"))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, f"http_{response.status_code}", response.text[:500] or response.reason_phrase)
