"""A plain (non-editable) ``pip install .`` works outside the checkout.

``schemas/`` sits beside ``mapper/`` (the client fixed the layout), outside the
package, so a wheel carries it as data files and the engine must find it
there. Installed with ``--no-deps`` into a new virtualenv whose only other
packages are this environment's (through ``PYTHONPATH``), and run from a folder
that is not the checkout, so nothing can be read from the source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A new venv with crm-mapper installed from a built wheel, and its environment."""
    wheels = tmp_path_factory.mktemp("wheels")
    venv = tmp_path_factory.mktemp("wheel-venv")
    # Built here, installed by the new venv's own pip: pip installing into another prefix
    # would first uninstall this environment's (editable) copy.
    # From a copy: setuptools builds in the source folder and would leave build/ in the checkout.
    source = tmp_path_factory.mktemp("source") / "crm-mapper"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", "node_modules", ".cache", "test-artifacts", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
                   check=True, cwd=wheels, timeout=300)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    *map(str, wheels.glob("*.whl"))], check=True, cwd=venv, timeout=300)
    env = {**os.environ, "PYTHONPATH": sysconfig.get_path("purelib")}
    return python, venv, env


def test_the_installed_package_reads_its_schemas_from_the_installed_data(installed):
    python, venv, env = installed
    script = "import mapper.core as c, mapper; print(c.SCHEMA_DIR); print(mapper.__file__)"
    found = subprocess.run([str(python), "-c", script],
                           check=True, capture_output=True, text=True, cwd=venv, env=env).stdout.split()
    assert found[0] == str(venv / "share" / "crm-mapper" / "schemas")
    assert found[1].startswith(str(venv))  # the installed copy, not the checkout
    assert (venv / "share" / "crm-mapper" / "schemas" / "khoros").is_dir()


def test_the_installed_cli_validates_a_mapping_and_rejects_a_broken_one(installed, tmp_path):
    python, venv, env = installed
    good = subprocess.run([str(python), "-m", "mapper.workbench.cli", "validate", str(ROOT / "mappings" / "demo.yaml")],
                          capture_output=True, text=True, cwd=venv, env=env)
    assert good.returncode == 0, good.stderr
    broken = tmp_path / "broken.yaml"
    demo = (ROOT / "mappings" / "demo.yaml").read_text(encoding="utf-8")
    broken.write_text(demo + "\nno_such_key: 1\n", encoding="utf-8")
    bad = subprocess.run([str(python), "-m", "mapper.workbench.cli", "validate", str(broken)],
                         capture_output=True, text=True, cwd=venv, env=env)
    assert bad.returncode != 0
    assert "no_such_key" in bad.stdout + bad.stderr
