"""The README's command blocks, found by the marker that names each one.

Every fenced block of README.md is preceded by ``<!-- readme-test: NAME -->``
(an HTML comment, invisible on the rendered page). A test runs a block by
asking for it by name, ``readme.block("NAME")``, so the test always runs the
README's text as it is now; ``tests/test_readme.py`` fails when a block has
no marker or a marker no test asks for.

The commands are written for a real machine (``/etc``, ``/opt``, port 8080,
placeholder secrets); :func:`localise` replaces exactly those strings with
their test-machine equivalents and nothing else.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")
MARKER = re.compile(r"<!-- readme-test: ([a-z0-9-]+) -->\n```(\w+)\n(.*?)^```$", re.S | re.M)
FENCE_OPENING = re.compile(r"^```\w+$", re.M)


@dataclass(frozen=True)
class Block:
    name: str
    language: str
    text: str
    line: int  # of the opening fence, for messages


def _readme() -> str:
    with open(README, encoding="utf-8") as handle:
        return handle.read()


def blocks(text: str | None = None) -> dict[str, Block]:
    """Every marked block of the README (or of ``text``), by name."""
    text = _readme() if text is None else text
    found: dict[str, Block] = {}
    for match in MARKER.finditer(text):
        name = match.group(1)
        assert name not in found, f"README.md: two blocks are marked {name!r}"
        line = text.count("\n", 0, match.start(2)) + 1
        found[name] = Block(name, match.group(2), match.group(3), line)
    return found


def unmarked_fences(text: str | None = None) -> list[int]:
    """Lines of README (or ``text``) fences that open a block without a marker just above them."""
    text = _readme() if text is None else text
    marked = {block.line for block in blocks(text).values()}
    return [text.count("\n", 0, m.start()) + 1 for m in FENCE_OPENING.finditer(text)
            if text.count("\n", 0, m.start()) + 1 not in marked]


def block(name: str) -> str:
    """The text of the block marked ``name``."""
    found = blocks()
    assert name in found, f"README.md has no block marked <!-- readme-test: {name} -->"
    return found[name].text


def localise(text: str, machine: Mapping[str, str]) -> str:
    """``text`` with each real-machine string of ``machine`` replaced by its local one."""
    for original, here in machine.items():
        text = text.replace(original, here)
    return text


def shell(script: str, env: Mapping[str, str], timeout: float = 120, cwd: str = ROOT,
          ) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as bash would from the checkout, stopping at the first failure."""
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=dict(env),
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class Running:
    """A README command left running in the background: its process and output file."""

    process: subprocess.Popen[bytes]
    output: str

    def text(self) -> str:
        with open(self.output, encoding="utf-8", errors="replace") as handle:
            return handle.read()


@contextmanager
def running(command: str, env: Mapping[str, str], url: str, output: str, cwd: str = ROOT,
            timeout: float = 60) -> Iterator[Running]:
    """Start a server command of the README (with bash, as typed), wait until ``url``
    answers /healthz, and stop it (SIGTERM to its process group) at the end."""
    with open(output, "wb") as sink:
        process = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=dict(env), stdout=sink,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Running(process, output)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert process.poll() is None, f"{command!r} stopped:\n{server.text()}"
            try:
                if requests.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:  # not listening yet, or too busy starting to answer
                pass
            assert time.monotonic() < deadline, f"{command!r} did not answer in {timeout} s:\n{server.text()}"
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
