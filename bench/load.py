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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.servers import free_port, redis_server, service_env, started, wait_until

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


def load_service_env(data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    env = service_env(data_dir, host="127.0.0.1", port=port, **settings)
    env["CLIPFORGE_MAX_ACTIVE_JOBS_PER_TENANT"] = "1000000"  # the submissions phase queues far more jobs than a tenant may keep
    env.setdefault("OMP_NUM_THREADS", "1")  # the job's worker takes one core; the API and this generator share the other
    return env


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc): the API's own cost, whatever else shares the CPUs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running_service(setup: str, folder: Path, settings: dict[str, str]) -> Iterator[tuple[str, int]]:
    """The service of ``setup`` on a free port, ready; yields its base URL and the API process's pid."""
    port = free_port()
    cli = [sys.executable, "-m", "cli.main"]
    with ExitStack() as stack:
        if setup == "embedded":
            env = load_service_env(folder, port, **settings)
            api = stack.enter_context(started([*cli, "serve"], env, folder / "serve.log"))  # API + worker
        elif setup == "redis":
            broker = stack.enter_context(redis_server(folder))
            env = load_service_env(folder, port, **{**settings, "broker_url": broker})
            api = stack.enter_context(started([*cli, "api"], env, folder / "api.log"))
            stack.enter_context(started([*cli, "worker", "--loglevel", "WARNING"], env, folder / "worker.log"))
        else:
            raise ValueError(setup)
        url = f"http://127.0.0.1:{port}"
        ready = lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200  # noqa: E731
        wait_until(ready, 90, interval=0.2, what=f"{setup} service ready", ignore=(httpx.HTTPError, OSError))
        yield url, api.pid


@dataclass
class PhaseResult:
    setup: str
    endpoint: str
    concurrency: int
    generator: str
    seconds: float = 0.0
    ok: int = 0  # requests answered 200 (reads) or 201 (submissions)
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    api_cpu_seconds: float = 0.0

    def fail(self, why: str, count: int = 1) -> None:
        if count:
            self.failed += count
            self.failures[why] = self.failures.get(why, 0) + count

    @property
    def requests(self) -> int:
        return self.ok + self.failed

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def api_cpu_ms_per_request(self) -> float:
        return 1000 * self.api_cpu_seconds / self.requests if self.requests else float("nan")

    def row(self) -> str:
        return (f"| {self.setup} | `{self.endpoint}` | {self.generator} | {self.concurrency} | {self.requests} | {self.throughput:.0f} | "
                f"{self.p50_ms:.1f} | {self.p99_ms:.1f} | {self.failed} | {self.api_cpu_ms_per_request:.2f} |")  # fmt: skip


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _httpx_phase(url: str, result: PhaseResult, request: str, job_ids: list[str], seconds: float) -> None:
    """``result.concurrency`` closed-loop clients, each sending its next request when the last one is answered."""
    deadline = time.monotonic() + seconds
    latencies_ms: list[float] = []
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
                    latencies_ms.append((time.perf_counter() - began) * 1000)
                else:
                    result.fail(f"HTTP {response.status_code}")

        began = time.monotonic()
        await asyncio.gather(*(loop(i) for i in range(result.concurrency)))
        result.seconds = time.monotonic() - began
    latencies_ms.sort()
    result.ok, result.p50_ms, result.p99_ms = len(latencies_ms), _percentile(latencies_ms, 0.5), _percentile(latencies_ms, 0.99)


# wrk's Lua hooks: a random job of the pool per read, the JSON spec per submission, and a JSON summary at the end
# (wrk counts answers of 400 and above as status errors, so 200 and 201 are its successes).
WRK_SCRIPT = """
local ids = {%(ids)s}
local body = %(body)s
function setup(thread) thread:set("seed", %(seed)d) end
function init(args) math.randomseed(seed) end
request = function()
  if "%(request)s" == "read" then return wrk.format("GET", "/v1/jobs/" .. ids[math.random(#ids)]) end
  return wrk.format("POST", "/v1/jobs", {["Content-Type"] = "application/json"}, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK-SUMMARY {"requests": %%d, "micros": %%d, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"status": %%d, "timeout": %%d, "p50_us": %%d, "p99_us": %%d}\\n', summary.requests, summary.duration, e.connect, e.read,
    e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def _wrk_phase(url: str, result: PhaseResult, request: str, job_ids: list[str], seconds: float, folder: Path) -> None:
    """The same closed loop from wrk (C, one thread): the generator's own CPU time hardly competes with the API's."""
    script = folder / f"wrk-{request}.lua"
    ids = ",".join(_lua_string(job_id) for job_id in job_ids)
    script.write_text(WRK_SCRIPT % {"ids": ids, "body": _lua_string(json.dumps(SUBMITTED_SPEC)), "seed": 0, "request": request})
    command = ["wrk", "-t1", f"-c{result.concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(script), url]
    run = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    line = next((ln for ln in run.stdout.splitlines() if ln.startswith("WRK-SUMMARY ")), None)
    if run.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stdout}{run.stderr}")
    summary = json.loads(line.removeprefix("WRK-SUMMARY "))
    for kind in ("connect", "read", "write", "timeout"):
        result.fail(f"wrk {kind} error", summary[kind])
    result.fail("HTTP status >= 400", summary["status"])
    # wrk's requests include the failed ones; its percentiles are over every answered request.
    result.ok = summary["requests"] - summary["status"]
    result.seconds = summary["micros"] / 1e6
    result.p50_ms, result.p99_ms = summary["p50_us"] / 1000, summary["p99_us"] / 1000


def pick_generator(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "httpx"
    if choice == "wrk" and shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk), or pass --generator httpx")
    return choice


def measure(setup: str, seconds: float, read_concurrency: int, write_concurrency: int, generator: str,
            wait_for_job: bool = True, settings: dict[str, str] | None = None) -> list[PhaseResult]:  # fmt: skip
    settings = settings or {}
    folder = Path(tempfile.mkdtemp(prefix=f"clipforge-load-{setup}-"))
    try:
        with running_service(setup, folder, settings) as (url, api_pid), httpx.Client(base_url=url, timeout=30) as http:
            background = http.post("/v1/jobs", json=BACKGROUND_SPEC).json()["id"]
            if wait_for_job:
                # The worker imports torch and loads the teacher first: the load starts once the job really runs.
                wait_until(
                    lambda: http.get(f"/v1/jobs/{background}").json()["stage"] == "synthesizing",
                    120,
                    interval=0.2,
                    what="background job running",
                    ignore=(httpx.HTTPError, OSError),
                )
            job_ids = [background] + [http.post("/v1/jobs", json=SUBMITTED_SPEC).json()["id"] for _ in range(READ_POOL_SIZE - 1)]
            reads = PhaseResult(setup, "GET /v1/jobs/{id}", read_concurrency, generator)
            writes = PhaseResult(setup, "POST /v1/jobs", write_concurrency, generator)
            for phase, request in ((reads, "read"), (writes, "write")):
                cpu_before = cpu_seconds(api_pid)
                if generator == "wrk":
                    _wrk_phase(url, phase, request, job_ids, seconds, folder)
                else:
                    asyncio.run(_httpx_phase(url, phase, request, job_ids, seconds))
                phase.api_cpu_seconds = cpu_seconds(api_pid) - cpu_before
            state = http.get(f"/v1/jobs/{background}").json()
            if wait_for_job and state["status"] != "running":
                print(f"warning: the background job was {state['status']} at the end, not running", file=sys.stderr)
            return [reads, writes]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


HEADER = (
    "| set-up | request | generator | concurrency | requests | throughput (req/s) | p50 (ms) | p99 (ms) | failed | API CPU (ms/req) |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=[*SETUPS, "all"], default=None, help="default: all (embedded with --short)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each phase (default 20, or 3 with --short)")
    parser.add_argument("--read-concurrency", type=int, default=8)
    parser.add_argument("--write-concurrency", type=int, default=2)
    parser.add_argument("--generator", choices=["auto", "wrk", "httpx"], default="auto",
                        help="wrk (C, little CPU of its own) or httpx (Python, in this process); auto: wrk when installed")  # fmt: skip
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="a service setting for this run, e.g. worker_nice=0 (repeatable)")  # fmt: skip
    parser.add_argument("--short", action="store_true", help="CI smoke run: embedded only, 3 s phases, no wait for the job to start")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    setup = args.setup or ("embedded" if args.short else "all")
    seconds = args.seconds or (3.0 if args.short else 20.0)
    generator = pick_generator(args.generator)
    settings = dict(item.split("=", 1) for item in args.setting)
    results: list[PhaseResult] = []
    for name in SETUPS if setup == "all" else (setup,):
        # --short (CI) does not wait the worker's start-up out: it checks the machinery, not the figures.
        results += measure(name, seconds, args.read_concurrency, args.write_concurrency, generator, not args.short, settings)
    print(HEADER)
    for result in results:
        print(result.row())
    for result in results:
        if result.failures:
            print(f"failures in {result.setup} {result.endpoint}: {result.failures}")
    if args.json:
        args.json.write_text(json.dumps([
            {"setup": r.setup, "endpoint": r.endpoint, "generator": r.generator, "concurrency": r.concurrency,
             "requests": r.requests, "failed": r.failed, "seconds": r.seconds, "throughput": r.throughput,
             "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "api_cpu_ms_per_request": r.api_cpu_ms_per_request}
            for r in results], indent=2))  # fmt: skip
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
