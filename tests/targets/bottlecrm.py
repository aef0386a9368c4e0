"""Run a real BottleCRM (PyPI ``django-crm``) on loopback for end-to-end tests.

BottleCRM is the project's primary real target, so its tests talk to the
genuine Django application rather than to a fake. Standing it up is slow
(pip install ~35 s, 253 migrations ~105 s), so the expensive steps are done
once into a cache folder and every test session only copies the result:

    $CRM_MAPPER_CACHE/bottlecrm-1.35.0/     (default ~/.cache/crm-mapper/...)
        venv/                 its own venv: it installs top-level packages
                              (``common``, ``contacts``, ``crm``...) that would
                              clash with ours, and needs Python >= 3.12
        settings/             a settings module: SQLite, Celery in memory
        pristine.sqlite3      the migrated, empty database
        prepare.lock          fcntl lock: one process installs/migrates at once
        pip.log, migrate.log  output of the slow steps (shown on failure)

Each start copies the pristine database into a fresh temporary folder,
creates a user, an org, an ADMIN profile and a personal access token in it,
and serves it with gunicorn on a free loopback port. Tests get the URL and
the token; the server and the folder are gone when the context exits.

    python -m tests.targets.bottlecrm prepare   # install + migrate, with timings
    python -m tests.targets.bottlecrm serve     # run one until Ctrl-C
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.live_server import free_port

VERSION = "1.35.0"
READY_TIMEOUT = 60.0
SETTINGS_MODULE = "crm_mapper_bottlecrm_settings"
DB_ENV = "CRM_MAPPER_BOTTLECRM_DB"

# The stock settings read PostgreSQL and Redis from the environment; the tests
# need neither. Tasks (notification emails) run inline, so no worker either.
SETTINGS_SOURCE = f'''"""BottleCRM settings written by tests/targets/bottlecrm.py: do not edit."""

import os

from crm.settings import *  # noqa: F401,F403

DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["{DB_ENV}"],
        # Two gunicorn workers share the file: wait for a lock, do not fail.
        "OPTIONS": {{"timeout": 30}},
    }}
}}
CELERY_BROKER_URL = "memory://"
CELERY_RESULT_BACKEND = "cache+memory://"
CELERY_TASK_ALWAYS_EAGER = True
'''

# Run with the venv's python inside a started server's folder. There is no
# password login over the API, so the credential is made in the database.
BOOTSTRAP_SOURCE = """
import json

import django

django.setup()
from common.models import Org, PersonalAccessToken, Profile, User

user = User.objects.create(email="crm-mapper@example.com")
org = Org.objects.create(name="crm-mapper tests")
profile = Profile.objects.create(user=user, org=org, role="ADMIN")
raw, _ = PersonalAccessToken.generate(profile, "crm-mapper-tests", scopes=[])
print(json.dumps({"token": raw, "org_id": str(org.id)}))
"""


class BottleCRMError(RuntimeError):
    """Raised when BottleCRM cannot be installed, migrated or started."""


@dataclass(frozen=True)
class BottleCRM:
    """A running BottleCRM: base ``url`` and a Bearer ``token`` (ADMIN rights)."""

    url: str
    token: str = field(repr=False)
    org_id: str = ""

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header every API call needs."""
        return {"Authorization": f"Bearer {self.token}"}


@dataclass(frozen=True)
class Installation:
    """The cached venv, settings folder and pristine database."""

    root: Path

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def settings_dir(self) -> Path:
        return self.root / "settings"

    @property
    def pristine_db(self) -> Path:
        return self.root / "pristine.sqlite3"

    @property
    def install_stamp(self) -> Path:
        return self.venv / "crm-mapper-installed.txt"


def cache_root() -> Path:
    """Where the install lives: ``$CRM_MAPPER_CACHE`` or ``~/.cache/crm-mapper``."""
    base = os.environ.get("CRM_MAPPER_CACHE") or str(Path.home() / ".cache" / "crm-mapper")
    return Path(base) / f"bottlecrm-{VERSION}"


def _is_new_enough(python: str) -> bool:
    """True if ``python`` runs and is >= 3.12 (pyenv shims may exist yet fail)."""
    check = "import sys; sys.exit(sys.version_info < (3, 12))"
    try:
        done = subprocess.run([python, "-c", check], check=False, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _pyenv_root() -> Path:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    try:
        out = subprocess.run(
            ["pyenv", "root"], check=False, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return Path.home() / ".pyenv"
    return Path(out.stdout.strip() or Path.home() / ".pyenv")


def find_python() -> str:
    """Find a Python >= 3.12 to build the venv with (django-crm requires it)."""
    versions = _pyenv_root() / "versions"
    candidates = sorted(glob.glob(str(versions / "3.12*" / "bin" / "python3")))
    candidates += sorted(glob.glob(str(versions / "3.13*" / "bin" / "python3")))
    candidates += [p for p in (shutil.which("python3.12"), shutil.which("python3.13")) if p]
    candidates.append(sys.executable)
    for candidate in candidates:
        if _is_new_enough(candidate):
            return candidate
    raise BottleCRMError(
        "BottleCRM needs Python >= 3.12 and none was found (looked in pyenv's "
        f"versions under {versions}, on PATH and at {sys.executable}). "
        "Install one, e.g. `pyenv install 3.12`."
    )


def _run_logged(
    args: list[str],
    log: Path,
    what: str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run a setup step with its output in ``log``; on failure show the tail."""
    with log.open("w") as out:
        done = subprocess.run(
            args, check=False, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise BottleCRMError(
            f"{what} failed (exit {done.returncode}); end of {log}:\n{_tail(log)}"
        )


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _server_env(inst: Installation, db: Path, secret_key: str) -> dict[str, str]:
    """Environment for every BottleCRM process: our settings, this database."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(
        PYTHONPATH=str(inst.settings_dir),
        DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
        SECRET_KEY=secret_key,
        ENV_TYPE="dev",
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        **{DB_ENV: str(db)},
    )
    return env


def _write_settings(inst: Installation) -> None:
    """(Re)write the settings module atomically if its text changed."""
    inst.settings_dir.mkdir(parents=True, exist_ok=True)
    target = inst.settings_dir / f"{SETTINGS_MODULE}.py"
    if target.exists() and target.read_text() == SETTINGS_SOURCE:
        return
    partial = target.with_suffix(".partial")
    partial.write_text(SETTINGS_SOURCE)
    os.replace(partial, target)


def _install(inst: Installation) -> None:
    if inst.install_stamp.exists():
        return
    if not inst.python.exists():
        venv = [find_python(), "-m", "venv", str(inst.venv)]
        _run_logged(venv, inst.root / "venv.log", "creating the venv")
    # django-crm itself requires gunicorn>=26.2, which has --no-control-socket.
    pip = [str(inst.python), "-m", "pip", "install", f"django-crm=={VERSION}", "gunicorn"]
    _run_logged(pip, inst.root / "pip.log", f"pip install django-crm=={VERSION}")
    inst.install_stamp.write_text(f"django-crm=={VERSION}\n")


def _migrate(inst: Installation) -> None:
    if inst.pristine_db.exists():
        return
    partial = inst.root / "pristine.sqlite3.partial"
    partial.unlink(missing_ok=True)
    workdir = inst.root / "migrate-work"  # crm.settings writes its logs to cwd
    workdir.mkdir(exist_ok=True)
    env = _server_env(inst, partial, os.urandom(48).hex())
    args = [str(inst.python), "-m", "django", "migrate", "--noinput"]
    _run_logged(args, inst.root / "migrate.log", "django migrate", cwd=workdir, env=env)
    os.replace(partial, inst.pristine_db)


# Each step is idempotent and checks its own "already done" marker.
PREPARE_STEPS = (("install", _install), ("settings", _write_settings), ("migrate", _migrate))


def prepare(root: Path | None = None) -> tuple[Installation, dict[str, float]]:
    """Install and migrate once (under a file lock); return seconds per step."""
    inst = Installation(root or cache_root())
    inst.root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    with (inst.root / "prepare.lock").open("w") as lock:
        started = time.monotonic()
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be preparing
        timings["wait for lock"] = time.monotonic() - started
        for name, step in PREPARE_STEPS:
            started = time.monotonic()
            step(inst)
            timings[name] = time.monotonic() - started
    return inst, timings


def _bootstrap(inst: Installation, workdir: Path, env: dict[str, str]) -> dict[str, str]:
    """Create user, org, ADMIN profile and token; return token and org id."""
    done = subprocess.run(
        [str(inst.python), "-c", BOOTSTRAP_SOURCE],
        check=False, cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise BottleCRMError(
            f"creating the test user and token failed (exit {done.returncode}):\n"
            f"{done.stderr[-3000:]}"
        )
    creds: dict[str, str] = json.loads(lines[-1])
    return creds


def _answers(url: str, token: str) -> bool:
    request = urllib.request.Request(
        f"{url}/api/contacts/?limit=1", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate gunicorn (graceful), then kill its process group if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: master + workers
            process.wait(timeout=15)


def _gunicorn_args(inst: Installation, port: int) -> list[str]:
    return [
        str(inst.venv / "bin" / "gunicorn"), "crm.wsgi:application",
        "-b", f"127.0.0.1:{port}", "-w", "2",
        "--timeout", "60", "--graceful-timeout", "5", "--access-logfile", "-",
        # Import Django once, then fork: ready in ~7 s instead of ~12 s on two
        # cores. Safe: the master opens no database connection.
        "--preload",
        # The default control socket is one per user ($HOME/.gunicorn): two
        # servers at once would fight over it.
        "--no-control-socket",
    ]


@contextmanager
def running_bottlecrm(root: Path | None = None) -> Iterator[BottleCRM]:
    """Start a BottleCRM on a clean copy of the pristine database; stop it on exit."""
    inst, _ = prepare(root)
    with tempfile.TemporaryDirectory(prefix="crm-mapper-bottlecrm-") as tmp:
        workdir = Path(tmp)
        db = workdir / "db.sqlite3"
        shutil.copyfile(inst.pristine_db, db)
        env = _server_env(inst, db, os.urandom(48).hex())
        creds = _bootstrap(inst, workdir, env)
        port = free_port()
        log = workdir / "gunicorn.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                _gunicorn_args(inst, port),
                cwd=workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our own group: killpg reaches the workers
            )
        try:
            server = BottleCRM(
                url=f"http://127.0.0.1:{port}", token=creds["token"], org_id=creds["org_id"]
            )
            _wait_ready(server, process, log)
            yield server
        finally:
            _stop(process)


def _wait_ready(server: BottleCRM, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BottleCRMError(
                f"gunicorn exited with {process.returncode} before answering; "
                f"end of its log:\n{_tail(log)}"
            )
        if _answers(server.url, server.token):
            return
        time.sleep(0.5)
    raise BottleCRMError(
        f"BottleCRM at {server.url} did not answer GET /api/contacts/ with 200 "
        f"within {READY_TIMEOUT:.0f} s; end of gunicorn's log:\n{_tail(log)}"
    )


@pytest.fixture(scope="session")
def bottlecrm() -> Iterator[BottleCRM]:
    """One BottleCRM per test session, on a fresh database."""
    with running_bottlecrm() as server:
        yield server


def main(argv: list[str]) -> int:
    """``prepare``: install + migrate with timings; ``serve``: run until Ctrl-C."""
    if argv == ["prepare"]:
        started = time.monotonic()
        inst, timings = prepare()
        for name, seconds in timings.items():
            print(f"{name:>14}: {seconds:6.1f} s")
        print(f"{'total':>14}: {time.monotonic() - started:6.1f} s  ({inst.root})")
        return 0
    if argv == ["serve"]:
        started = time.monotonic()
        with running_bottlecrm() as server:
            # A throwaway local credential: printed so a person can use curl.
            print(f"# ready in {time.monotonic() - started:.1f} s; Ctrl-C stops it", flush=True)
            print(f"BOTTLECRM_URL={server.url}\nBOTTLECRM_TOKEN={server.token}", flush=True)
            # SIGTERM too should stop gunicorn and remove the folder.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with suppress(KeyboardInterrupt):
                signal.pause()
        return 0
    print("usage: python -m tests.targets.bottlecrm prepare|serve", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
