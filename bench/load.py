"""Load test of the service on loopback: job submissions and status reads while a worker runs a job.

For each set-up it starts the service itself in a temp dir on a free port (``embedded``: ``clipforge serve``, SQLite and
kombu's SQLAlchemy transport; ``redis``: a throwaway redis-server, ``clipforge api`` and ``clipforge worker``, SQLite),
submits a long job and waits for the worker to run it, then drives two closed-loop phases from this process with an
asyncio httpx client: status reads (``GET /v1/jobs/{id}`` over a pool of jobs), then submissions (``POST /v1/jobs``).
It prints a table of throughput, p50/p99 latency (client-side, so including this generator's own time on the shared
CPUs) and failed requests. Every phase is bounded in time, and the service is stopped and its folder removed at the end.

    python -m bench.load                      # both set-ups, 20 s per phase
    python -m bench.load --short              # the CI smoke run: a few seconds per phase, embedded only, no figures to keep
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
SETUPS = ("embedded", "redis")
# The job the worker runs during the load: long enough to outlast both phases, with tiny artifacts.
BACKGROUND_SPEC = {
    "classes": ["circle", "square", "star"],
    "synthesis": {"images_per_class": 8, "steps": 2000, "cutouts": 1, "batch_size": 24},
    "distillation": {"epochs": 2, "warmup_epochs": 1, "batch_size": 8},
    "student": {"arch": "tiny_cnn"},
    "seed": 0,
}
SUBMITTED_SPEC = {"classes": ["ring", "heart"], "student": {"arch": "tiny_cnn"}, "synthesis": {"images_per_class": 4, "steps": 4}}
READ_POOL_SIZE = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def started(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    handle = log.open("ab")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        stop(process)
        handle.close()


def service_env(data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPFORGE_")}
    env.update(CLIPFORGE_DATA_DIR=str(data_dir), CLIPFORGE_HOST="127.0.0.1", CLIPFORGE_PORT=str(port), CLIPFORGE_DEVICE="cpu")
    env.update(CLIPFORGE_MAX_ACTIVE_JOBS_PER_TENANT="1000000")  # the submissions phase queues far more jobs than a tenant may keep
    env.update({f"CLIPFORGE_{k.upper()}": v for k, v in settings.items()})
    env.setdefault("OMP_NUM_THREADS", "1")  # the job's worker takes one core; the API and this generator share the other
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc): the API's own cost, whatever else shares the CPUs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running_service(setup: str, folder: Path) -> Iterator[tuple[str, int]]:
    """The service of ``setup`` on a free port, ready; yields its base URL and the API process's pid."""
    port = free_port()
    cli = [sys.executable, "-m", "cli.main"]
    with ExitStack() as stack:
        if setup == "embedded":
            api = stack.enter_context(started([*cli, "serve"], service_env(folder, port), folder / "serve.log"))  # API in-process
        elif setup == "redis":
            binary = shutil.which("redis-server")
            if binary is None:
                raise SystemExit("redis-server is not installed (apt-get install -y redis-server)")
            redis_port = free_port()
            redis = [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
            stack.enter_context(started(redis, dict(os.environ), folder / "redis.log"))
            wait_until(lambda: socket.create_connection(("127.0.0.1", redis_port), timeout=0.2).close() or True, 15, "redis listening")
            env = service_env(folder, port, broker_url=f"redis://127.0.0.1:{redis_port}/0")
            api = stack.enter_context(started([*cli, "api"], env, folder / "api.log"))
            stack.enter_context(started([*cli, "worker", "--loglevel", "WARNING"], env, folder / "worker.log"))
        else:
            raise ValueError(setup)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, 90, f"{setup} service ready")
        yield url, api.pid


@dataclass
class PhaseResult:
    setup: str
    endpoint: str
    concurrency: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    api_cpu_seconds: float = 0.0

    def fail(self, why: str) -> None:
        self.failed += 1
        self.failures[why] = self.failures.get(why, 0) + 1

    @property
    def requests(self) -> int:
        return len(self.latencies_ms) + self.failed

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def api_cpu_ms_per_request(self) -> float:
        return 1000 * self.api_cpu_seconds / self.requests if self.requests else float("nan")

    def row(self) -> str:
        rate = len(self.latencies_ms) / self.seconds if self.seconds else 0.0
        return (f"| {self.setup} | `{self.endpoint}` | {self.concurrency} | {self.requests} | {rate:.0f} | {self.percentile(0.50):.1f} | "
                f"{self.percentile(0.99):.1f} | {self.failed} | {self.api_cpu_ms_per_request:.2f} |")  # fmt: skip


async def _phase(url: str, result: PhaseResult, request: str, job_ids: list[str], seconds: float) -> None:
    """``result.concurrency`` closed-loop clients, each sending its next request when the last one is answered."""
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=result.concurrency, max_keepalive_connections=result.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:

        async def loop(index: int) -> None:
            rng = random.Random(index)
            while time.monotonic() < deadline:
                began = time.perf_counter()
                try:
                    if request == "read":
                        response = await client.get(f"/v1/jobs/{rng.choice(job_ids)}")
                        ok = response.status_code == 200
                    else:
                        response = await client.post("/v1/jobs", json=SUBMITTED_SPEC)
                        ok = response.status_code == 201
                except httpx.HTTPError as exc:
                    result.fail(type(exc).__name__)
                    continue
                if ok:
                    result.latencies_ms.append((time.perf_counter() - began) * 1000)
                else:
                    result.fail(f"HTTP {response.status_code}")

        began = time.monotonic()
        await asyncio.gather(*(loop(i) for i in range(result.concurrency)))
        result.seconds = time.monotonic() - began


def measure(setup: str, seconds: float, read_concurrency: int, write_concurrency: int, wait_for_job: bool = True) -> list[PhaseResult]:
    folder = Path(tempfile.mkdtemp(prefix=f"clipforge-load-{setup}-"))
    try:
        with running_service(setup, folder) as (url, api_pid), httpx.Client(base_url=url, timeout=30) as http:
            background = http.post("/v1/jobs", json=BACKGROUND_SPEC).json()["id"]
            if wait_for_job:
                # The worker imports torch and loads the teacher first: the load starts once the job really runs.
                wait_until(lambda: http.get(f"/v1/jobs/{background}").json()["stage"] == "synthesizing", 120, "background job running")
            job_ids = [background] + [http.post("/v1/jobs", json=SUBMITTED_SPEC).json()["id"] for _ in range(READ_POOL_SIZE - 1)]
            reads = PhaseResult(setup, "GET /v1/jobs/{id}", read_concurrency, seconds)
            writes = PhaseResult(setup, "POST /v1/jobs", write_concurrency, seconds)
            for phase, request in ((reads, "read"), (writes, "write")):
                cpu_before = cpu_seconds(api_pid)
                asyncio.run(_phase(url, phase, request, job_ids, seconds))
                phase.api_cpu_seconds = cpu_seconds(api_pid) - cpu_before
            state = http.get(f"/v1/jobs/{background}").json()
            if wait_for_job and state["status"] != "running":
                print(f"warning: the background job was {state['status']} at the end, not running", file=sys.stderr)
            return [reads, writes]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


HEADER = ("| set-up | request | concurrency | requests | throughput (req/s) | p50 (ms) | p99 (ms) | failed | API CPU (ms/req) |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=[*SETUPS, "all"], default=None, help="default: all (embedded with --short)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each phase (default 20, or 3 with --short)")
    parser.add_argument("--read-concurrency", type=int, default=8)
    parser.add_argument("--write-concurrency", type=int, default=2)
    parser.add_argument("--short", action="store_true", help="CI smoke run: embedded only, 3 s phases, no wait for the job to start")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    setup = args.setup or ("embedded" if args.short else "all")
    seconds = args.seconds or (3.0 if args.short else 20.0)
    results: list[PhaseResult] = []
    for name in SETUPS if setup == "all" else (setup,):
        # --short (CI) does not wait the worker's start-up out: it checks the machinery, not the figures.
        results += measure(name, seconds, args.read_concurrency, args.write_concurrency, wait_for_job=not args.short)
    print(HEADER)
    for result in results:
        print(result.row())
    for result in results:
        if result.failures:
            print(f"failures in {result.setup} {result.endpoint}: {result.failures}")
    if args.json:
        args.json.write_text(json.dumps([
            {"setup": r.setup, "endpoint": r.endpoint, "concurrency": r.concurrency, "requests": r.requests, "failed": r.failed,
             "seconds": r.seconds, "p50_ms": r.percentile(0.5), "p99_ms": r.percentile(0.99),
             "api_cpu_ms_per_request": r.api_cpu_ms_per_request} for r in results], indent=2))  # fmt: skip
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
