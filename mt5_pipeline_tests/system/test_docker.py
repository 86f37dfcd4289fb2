"""The Docker image builds and every compose service starts, proven without Docker.

The test performs the Dockerfile's own steps: its COPY instructions, in their order, into
a scratch directory (so a layer sees only what was copied before it, as in the image),
its ENV, and its `pip install` commands in a fresh virtual environment of the same
Python minor version. Then each compose service that runs the image runs its command
from that environment, in its working directory, with its environment: a real start
against a fresh PostgreSQL database for `migrate`, `api`, `dagster-code-server` with
`dagster-webserver` loading the code location from it, and `ea-pusher` (one push cycle),
`--help` for the rest. With a Docker engine present,
`docker build` runs too.

pip installs from the machine's configured wheels/index (pip.conf's find-links); the
dependency layer takes a minute or two on 2 cores, hence `slow` (still in make test).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from mt5_pipeline.apps.servers import free_port
from mt5_pipeline.storage.migrate import head_revision
from mt5_pipeline_tests import ROOT
from mt5_pipeline_tests.install_support import fresh_database as fresh_database_for

DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# System steps of a RUN that need root in the image and mean nothing in a scratch dir.
SYSTEM_STEPS = ("useradd", "mkdir", "chown")


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _ignored(name: str) -> bool:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    return name in ("__pycache__",) or any(p.strip("*/").rstrip("/") == name for p in patterns)


def _copy(sources: list[str], dest: str, workdir: Path) -> list[Path]:
    target = workdir / dest if not dest.startswith("/") else Path(dest)
    into_dir = dest.endswith("/") or len(sources) > 1
    copied = []
    for source in sources:
        src = ROOT / source
        assert src.exists(), f"COPY {source}: not in the build context"
        if src.is_dir():
            # COPY dir ./dir copies the directory's contents into dest.
            shutil.copytree(
                src,
                target,
                dirs_exist_ok=True,
                ignore=lambda d, names: [n for n in names if _ignored(n) or n.endswith(".pyc")],
            )
            copied.append(target)
        else:
            where = target / src.name if into_dir else target
            where.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, where)
            copied.append(where)
    return copied


class ScratchImage:
    """The image's filesystem (its WORKDIR) and virtual environment, built step by step."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.venv = base / "venv"
        self.env: dict[str, str] = {}
        self.workdir = base / "root"
        self.log: list[str] = []

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def build(self) -> None:
        instructions = dockerfile_instructions()
        assert instructions[0][0] == "FROM"
        image_python = re.match(r"python:(\d+\.\d+)", instructions[0][1])
        assert image_python, instructions[0]
        if image_python.group(1) != f"{sys.version_info.major}.{sys.version_info.minor}":
            pytest.skip(f"the image runs Python {image_python.group(1)}, this machine {sys.version.split()[0]}")
        done = subprocess.run(
            [sys.executable, "-m", "venv", str(self.venv)], capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        for word, args in instructions[1:]:
            if word == "ENV":
                for pair in shlex.split(args):
                    key, _, value = pair.partition("=")
                    self.env[key] = value
            elif word == "WORKDIR":
                self.workdir = self.base / "root" / args.lstrip("/")
                self.workdir.mkdir(parents=True, exist_ok=True)
                self.app_dir = args
            elif word == "COPY":
                *sources, dest = shlex.split(args)
                _copy(sources, dest, self.workdir)
            elif word == "RUN":
                self._run(args)

    def _run(self, command: str) -> None:
        for part in (p.strip() for p in command.split("&&")):
            words = shlex.split(part)
            if words[0] == "pip":
                # The image's pip is its only Python's: here, the venv's. PIP_NO_CACHE_DIR
                # stays as the image sets it; skipping the .pyc compilation only saves time.
                env = {**os.environ, "PIP_NO_COMPILE": "1", **self.env}
                done = subprocess.run(
                    [str(self.bin / "python"), "-m", "pip", *words[1:]],
                    cwd=self.workdir,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=1200,
                )
                self.log.append(f"$ {part}\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
                assert done.returncode == 0, (
                    f"RUN {part} failed in a scratch copy of the image's files:\n{done.stderr[-4000:]}"
                )
            elif words[0] == "cp":
                # The image copies dagster.yaml into DAGSTER_HOME: the file must be there already.
                assert (self.workdir / words[1]).is_file(), f"RUN {part}: {words[1]} was not copied before this step"
            else:
                assert words[0] in SYSTEM_STEPS, f"RUN {part}: the test does not know this step; teach test_docker.py"


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> ScratchImage:
    built = ScratchImage(tmp_path_factory.mktemp("image"))
    started = time.monotonic()
    built.build()
    built.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return built


@pytest.fixture(scope="module")
def fresh_database() -> Iterator[str]:
    with fresh_database_for("mt5_image") as url:
        yield url


def app_services() -> dict[str, dict]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    return {
        name: s
        for name, s in compose["services"].items()
        if s.get("build", {}).get("dockerfile") == "docker/Dockerfile"
    }


def interpolate(value: str, values: dict[str, str]) -> str:
    """compose's ${NAME}, ${NAME:-default} and ${NAME:?message} against ``values``."""

    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if values.get(name):
            return values[name]
        assert op != ":?", f"compose would refuse to start: {name} unset ({arg})"
        return arg if op == ":-" else ""

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(:-|:\?)?([^}]*)\}", one, value)


def service_env(image: ScratchImage, service: dict, database_url: str) -> dict[str, str]:
    """The container's environment: the image's ENV, then the service's, with compose's
    ${...} interpolations given this machine's values."""
    url = make_url(database_url)
    values = {
        "DATABASE_URL": database_url,
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "",
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_DB": url.database,
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "API_KEYS": "image-test-api-key",
        "EA_API_KEY": "image-test-ea-key",
        "EA_SERVER_IP": "127.0.0.1",
        "EA_SERVER_PORT": str(free_port()),
    }
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR")}
    env.update(image.env)
    for key, value in (service.get("environment") or {}).items():
        value = str(value)
        if key in values:
            env[key] = values[key]
            continue
        env[key] = interpolate(value, values)
    env["PATH"] = f"{image.bin}{os.pathsep}{env.get('PATH', '')}"
    # The image's absolute paths live in the scratch root.
    for key in ("MODEL_DIR", "DAGSTER_HOME"):
        if env.get(key, "").startswith("/"):
            local = image.base / "root" / env[key].lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            env[key] = str(local)
    shutil.copy(image.workdir / "dagster.yaml", Path(env["DAGSTER_HOME"]) / "dagster.yaml")  # the image's RUN cp
    return env


def service_command(image: ScratchImage, service: dict, **replace: str) -> tuple[list[str], Path]:
    command = service["command"]
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    app = Path(image.app_dir)
    replace = {"0.0.0.0": "127.0.0.1", **replace}  # a test binds loopback only
    words = [
        str(image.workdir / Path(w).relative_to(app)) if w.startswith(str(app) + "/") else replace.get(w, w)
        for w in words
    ]
    assert (image.bin / words[0]).exists(), f"{words[0]} is not installed in the image"
    words[0] = str(image.bin / words[0])
    working_dir = service.get("working_dir", image.app_dir)
    cwd = image.workdir / Path(working_dir).relative_to(app)
    assert cwd.is_dir(), f"working_dir {working_dir} does not exist in the image"
    return words, cwd


def test_the_dependency_layer_installs_from_what_was_copied_before_it(image):
    # Reaching here means every pip install of the Dockerfile succeeded on exactly the files
    # copied before it; the package then comes from the image's own install, not the checkout.
    done = subprocess.run(
        [str(image.bin / "python"), "-c", "import mt5_pipeline; print(mt5_pipeline.__file__)"],
        cwd=image.base,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(image.venv)
    print(f"scratch image built in {image.seconds:.0f} s")  # type: ignore[attr-defined]


def test_every_compose_service_of_the_image_starts(image, fresh_database):
    services = app_services()
    assert {
        "migrate", "api", "dagster-code-server", "dagster-webserver", "dagster-daemon", "ea-pusher", "live-signals",
        "ml-trainer",
    } <= set(services)  # fmt: skip
    ran = []

    def run(name: str, extra: list[str] | None = None, **replace: str) -> subprocess.CompletedProcess:
        words, cwd = service_command(image, services[name], **replace)
        env = service_env(image, services[name], fresh_database)
        done = subprocess.run([*words, *(extra or [])], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        ran.append(name)
        return done

    # The one-shot migration, for real: everything else depends on it.
    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert head_revision() in migrated.stdout

    # The code server, on loopback: the webserver below loads the location from it.
    grpc_port = str(free_port())
    words, cwd = service_command(image, services["dagster-code-server"], **{"4000": grpc_port})
    server_log = open(image.base / "dagster-code-server.log", "w")
    code_server = subprocess.Popen(
        words,
        cwd=cwd,
        env=service_env(image, services["dagster-code-server"], fresh_database),
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    # The service names of compose's network are this machine's loopback here.
    at_the_code_server = {"DAGSTER_CODE_SERVER_HOST": "127.0.0.1", "DAGSTER_CODE_SERVER_PORT": grpc_port}
    try:
        _serve_and_check(image, services, fresh_database, at_the_code_server)
    finally:
        code_server.terminate()
        code_server.wait(timeout=60)
        server_log.close()
    ran += ["api", "dagster-code-server", "dagster-webserver"]

    # The seed's pusher, one real cycle against the migrated database.
    pushed = run("ea-pusher", ["--once"])
    assert pushed.returncode == 0, pushed.stderr
    for name in sorted(set(services) - set(ran)):
        helped = run(name, ["--help"])
        assert helped.returncode == 0, f"{name}: {helped.stderr[-3000:]}"
        assert "usage" in helped.stdout.lower(), name


LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"


def _serve_and_check(image: ScratchImage, services: dict, database: str, code_server_env: dict[str, str]) -> None:
    """The API and the webserver up and answering; the webserver with the code location
    loaded from the code server."""
    for name, ready in (("api", "/health"), ("dagster-webserver", "/server_info")):
        port = str(free_port())
        inner = "18001" if name == "api" else "3000"
        words, cwd = service_command(image, services[name], **{inner: port})
        env = {**service_env(image, services[name], database), **code_server_env}
        log = open(image.base / f"{name}.log", "w")
        proc = subprocess.Popen(words, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            answer = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=5)
                    if answer.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(1)
            assert answer is not None and answer.status_code == 200, (image.base / f"{name}.log").read_text()[-4000:]
            if name == "api":
                assert answer.json()["database"] == "ok"
            else:
                graphql = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": LOCATIONS}, timeout=30)
                [entry] = graphql.json()["data"]["workspaceOrError"]["locationEntries"]
                loaded = {"name": "mt5_pipeline", "locationOrLoadError": {"__typename": "RepositoryLocation"}}
                assert entry == loaded, (image.base / f"{name}.log").read_text()[-4000:]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(
    not _docker_engine(), reason="no Docker engine here (client only, or none): the scratch build above stands in"
)
def test_docker_build():
    done = subprocess.run(
        ["docker", "build", "-f", str(DOCKERFILE), "-t", "mt5-pipeline:test", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stderr[-4000:]
