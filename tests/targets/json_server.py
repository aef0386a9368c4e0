"""json-server 0.17.4 (npm) as a real, fast CRM-like target for tests.

Why json-server: it installs in seconds and starts in about a second, yet it
is a real HTTP service written by someone else, with its own quirks (see
``docs/targets/json-server.md``), so mappings are tried against behaviour we
did not design. Why pinned to 0.17.4: the 1.x betas drop ``q=`` search and
nested routes.

It is installed once per machine into a cache folder outside the repository
(``$CRM_MAPPER_CACHE/json-server-0.17.4``, default
``~/.cache/crm-mapper/json-server-0.17.4``). Each server gets a fresh
``db.json`` in its own temporary folder, because json-server rewrites that
file on every write.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.live_server import free_port

VERSION = "0.17.4"
PACKAGE = f"json-server@{VERSION}"
BIN_JS = Path("node_modules", "json-server", "lib", "cli", "bin.js")
EMPTY_DB: dict[str, list[Any]] = {"customers": [], "cases": [], "interactions": []}
START_TIMEOUT = 20.0
INSTALL_TIMEOUT = 300.0


class JsonServerError(RuntimeError):
    """json-server could not be installed or started; the message says why."""


class NodeMissing(JsonServerError):
    """``node`` or ``npm`` is not on PATH: the tests that need it are skipped."""


@dataclass(frozen=True)
class JsonServer:
    """A running json-server: ``url`` has no trailing slash; ``db_path`` is
    the db.json it reads and rewrites (handy to assert what was stored).

    json-server writes that file asynchronously, after it has answered: read
    it with :meth:`stored` polling, not once right after a write.
    """

    url: str
    db_path: Path

    def stored(self, until: Callable[[dict[str, Any]], bool], timeout: float = 5.0) -> dict[str, Any]:
        """The db.json content once ``until(content)`` holds; raises after
        ``timeout`` seconds with the last content seen."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                data: dict[str, Any] = json.loads(self.db_path.read_text(encoding="utf-8"))
            except ValueError:  # caught mid-write
                data = {}
            if until(data):
                return data
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.db_path} did not reach the expected state within {timeout} s: {data}")
            time.sleep(0.05)


def install_dir() -> Path:
    parent = os.environ.get("CRM_MAPPER_CACHE") or Path.home() / ".cache" / "crm-mapper"
    return Path(parent) / f"json-server-{VERSION}"


def _installed(prefix: Path) -> bool:
    manifest = prefix / "node_modules" / "json-server" / "package.json"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return False
    return version == VERSION and (prefix / BIN_JS).is_file()


def install_json_server() -> Path:
    """Return the path of json-server's ``bin.js``, installing it first if
    the cache folder does not hold it yet.

    npm installs into a sibling temporary folder that is then renamed into
    place, so an interrupted or concurrent install never leaves a half-filled
    cache behind.
    """
    prefix = install_dir()
    if _installed(prefix):
        return prefix / BIN_JS
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise NodeMissing("json-server tests need Node.js and npm on PATH; install Node.js 18 or newer")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{prefix.name}-", dir=prefix.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        done = subprocess.run(
            [npm, "install", "--prefix", str(staging), "--no-audit", "--no-fund", PACKAGE],
            capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False,
        )
        if done.returncode != 0 or not _installed(staging):
            raise JsonServerError(
                f"'npm install {PACKAGE}' into {staging} failed with exit code {done.returncode}; "
                f"check the npm registry is reachable. npm said:\n{_tail(done.stderr or done.stdout)}"
            )
        if not _installed(prefix):  # another process may have won the race
            shutil.rmtree(prefix, ignore_errors=True)
            staging.rename(prefix)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return prefix / BIN_JS


@contextmanager
def running_json_server(db_fixture: Mapping[str, Any] | None = None) -> Iterator[JsonServer]:
    """Start json-server on a free loopback port over a fresh copy of
    ``db_fixture`` (default: empty ``customers``, ``cases``, ``interactions``)
    and stop it on exit."""
    bin_js = install_json_server()
    node = shutil.which("node")
    if node is None:
        raise NodeMissing("json-server needs 'node' on PATH; install Node.js 18 or newer")
    with tempfile.TemporaryDirectory(prefix="json-server-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        db_path = folder / "db.json"
        db_path.write_text(json.dumps(EMPTY_DB if db_fixture is None else db_fixture), encoding="utf-8")
        # Its output goes to files, not pipes: nobody reads a pipe while tests
        # run, and json-server logs every request, so a pipe would fill up.
        out = stack.enter_context((folder / "stdout.log").open("w+b"))
        err = stack.enter_context((folder / "stderr.log").open("w+b"))
        port = free_port()
        process = subprocess.Popen(
            [node, str(bin_js), "--host", "127.0.0.1", "--port", str(port), str(db_path)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=folder,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_until_answering(process, url, folder)
            yield JsonServer(url=url, db_path=db_path)
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _wait_until_answering(process: subprocess.Popen[bytes], url: str, folder: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise JsonServerError(f"json-server exited with code {process.returncode} before "
                                  f"answering on {url}; {_output(folder)}")
        try:
            if requests.get(url + "/db", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise JsonServerError(f"json-server did not answer on {url} within "
                                  f"{START_TIMEOUT:.0f} s; {_output(folder)}")
        time.sleep(0.1)


def _output(folder: Path) -> str:
    # json-server prints some fatal errors (EADDRINUSE) to stdout, so show both.
    logs = {name: (folder / f"{name}.log").read_text(errors="replace") for name in ("stderr", "stdout")}
    return "; ".join(f"its {name} said:\n{_tail(text)}" for name, text in logs.items() if text.strip()) \
        or "it printed nothing"


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.fixture(scope="session")
def json_server() -> Iterator[JsonServer]:
    """One json-server for the whole session, over the empty collections.

    Shared state: tests must create their own records (unique emails) rather
    than assume an empty database.
    """
    try:
        install_json_server()
    except NodeMissing as exc:
        pytest.skip(str(exc))
    with running_json_server() as server:
        yield server
