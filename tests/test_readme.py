"""Every command block of README.md, run, and its documented effect checked.

Each block is found by its marker (``<!-- readme-test: NAME -->``, see
``tests/support/readme.py``) and run as written, with only the real-machine
strings localised: ``/opt`` and ``/etc`` become temporary folders, port 8080 a
free port (through ``MAPPER_PORT`` / ``MAPPER_BIND`` when the command names
none), placeholder secrets and CRM URLs those of the test CRMs.

Where running a command as written cannot fit in a test, the test runs the
nearest thing that still fails when the command is wrong, and says why:
``pip-compile`` gets ``--dry-run`` (its output must equal constraints.txt),
the full ``pytest`` collects instead of running (it is the suite running this
test, and ``.ci/run`` runs it), and re-recording writes only the demo's
recording, into a temporary folder. The production block and the systemd
unit are run by ``tests/test_deploy.py``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from importlib.metadata import distributions
from pathlib import Path

import pytest
import requests

from mapper.service.app import create_app, parse_tokens
from tests.support import readme
from tests.support.live_server import LiveServer, free_port
from tests.test_scaffold import FILLS, SPECS

ROOT = readme.ROOT
BIN = os.path.dirname(sys.executable)
README_KHOROS_SECRET = "the-secret-you-register-with-khoros"


def clean_environ(**extra: str) -> dict[str, str]:
    """This process's environment without the server's own variables, plus ``extra``."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MAPPER_", "PROMETHEUS_", "DEMO_CRM_", "BOTTLECRM_", "PYTEST_"))}
    env.update(extra)
    return env


def with_path(bin_dir: str, **extra: str) -> dict[str, str]:
    """An environment where ``python3``, ``mapper``, ``gunicorn`` are those of ``bin_dir``."""
    env = clean_environ(**extra)
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = bin_dir + os.pathsep + os.environ["PATH"]
    return env


def commands(block: str) -> list[str]:
    """The command lines of a block (comment lines dropped)."""
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# --- every block is covered --------------------------------------------------------------

def test_every_readme_block_is_marked_and_run_by_a_test() -> None:
    assert readme.unmarked_fences() == [], "README.md blocks without <!-- readme-test: NAME --> above them"
    asked: set[str] = set()
    for path in glob.glob(os.path.join(ROOT, "tests", "**", "*.py"), recursive=True):
        asked |= set(re.findall(r'readme\.block\("([a-z0-9-]+)"\)', Path(path).read_text(encoding="utf-8")))
    names = set(readme.blocks())
    assert names - asked == set(), "README blocks that no test runs"
    assert asked - names == set(), "tests asking for README blocks that are gone"


def test_the_check_finds_an_unmarked_block_and_reads_a_marked_one() -> None:
    text = ("Intro\n\n<!-- readme-test: one -->\n```sh\necho one\n```\n\n"
            "Then\n\n```sh\necho two\n```\n\n<!-- readme-test: three -->\n```http\nGET /\n```\n")
    assert readme.unmarked_fences(text) == [10]
    found = readme.blocks(text)
    assert {name: (b.language, b.text, b.line) for name, b in found.items()} == {
        "one": ("sh", "echo one\n", 4), "three": ("http", "GET /\n", 15)}


# --- a brand-new virtualenv: the production install, then the first command --------------

@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The README's install block, run once: a new virtualenv (pip from constraints.txt)
    in place of /opt/crm-mapper and a folder in place of /etc."""
    root = tmp_path_factory.mktemp("machine")
    (root / "etc").mkdir()
    places = {"/opt/crm-mapper": str(root / "opt" / "crm-mapper"), " /etc/": f" {root / 'etc'}/"}
    done = readme.shell(readme.localise(readme.block("install"), places), clean_environ(), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return places


@pytest.mark.slow
def test_the_install_block_makes_a_virtualenv_and_etc_that_validate(machine: dict[str, str]) -> None:
    venv_bin = Path(machine["/opt/crm-mapper"], "bin")
    etc = Path(machine[" /etc/"].strip(), "crm-mapper")
    assert (venv_bin / "mapper").exists() and (venv_bin / "gunicorn").exists()
    assert not (etc / "mappings").is_symlink() and (etc / "mappings" / "zendesk.yaml").is_file()  # cp -L
    assert stat.S_IMODE((etc / "env").stat().st_mode) == 0o600
    assert (etc / "env").read_text() == (etc / "env.example").read_text()
    done = subprocess.run([str(venv_bin / "mapper"), "validate", str(etc / "server.yaml")], cwd="/",
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"{etc / 'server.yaml'}: ok (server file)\n"), done.stderr


@pytest.mark.slow
def test_the_first_command_serves_the_demo_and_the_curl_gets_its_model(machine: dict[str, str],
                                                                       tmp_path: Path) -> None:
    first, _second = commands(readme.block("two-commands"))
    port = free_port()
    env = with_path(str(Path(machine["/opt/crm-mapper"], "bin")), MAPPER_PORT=str(port),
                    DEMO_CRM_DATA=str(tmp_path / "demo-data"))
    with readme.running(first, env, f"http://127.0.0.1:{port}", str(tmp_path / "serve.log"), timeout=180) as server:
        printed = re.search(r"accepts the token\n\s+(\S+)\n", server.text())
        assert printed, server.text()
        curl = readme.localise(readme.block("demo-curl"), {"<printed token>": printed.group(1),
                                                           "127.0.0.1:8080": f"127.0.0.1:{port}"}).strip()
        done = readme.shell(curl + " --fail", env, timeout=60)
        assert done.returncode == 0, done.stderr
        model = json.loads(done.stdout)
        assert "email" in {field["name"] for field in model["fields"]}
        wrong = readme.shell(curl.replace(printed.group(1), "not-the-printed-token") + " --fail", env, timeout=60)
        assert wrong.returncode == 22  # curl --fail: HTTP 401


@pytest.mark.slow
def test_the_pip_compile_command_reproduces_constraints_txt(machine: dict[str, str]) -> None:
    """Run with --dry-run (the real command rewrites constraints.txt in the checkout):
    what it would write must be the committed file, so the pins are what the README's
    command gives from setup.cfg."""
    install, compile_ = commands(readme.block("refresh-constraints"))
    env = with_path(str(Path(machine["/opt/crm-mapper"], "bin")))
    done = readme.shell(install, env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert compile_.startswith("pip-compile ")
    done = readme.shell(compile_.replace("pip-compile ", "pip-compile --dry-run ", 1), env, timeout=300)
    assert done.returncode == 0, done.stderr
    would_write = [line for line in (done.stdout + done.stderr).splitlines()
                   if not line.lstrip().startswith("WARNING") and line != "Dry-run, so nothing updated."]
    assert would_write == Path(ROOT, "constraints.txt").read_text(encoding="utf-8").splitlines()


# --- the second command and the quick loop: what CI runs ---------------------------------

@pytest.mark.slow
def test_the_second_command_is_what_ci_runs_and_the_quick_loop_leaves_out_bottlecrm() -> None:
    """The second command's pytest is the suite this test is part of, so it is collected,
    not run (the quick loop's selection, whose deselected tests are the rest of the
    suite); its install is the one .ci/run makes in a new virtualenv on every run, which
    this virtualenv must match pin for pin."""
    _first, second = commands(readme.block("two-commands"))
    install, run = second.split(" && ")
    ci = Path(ROOT, ".ci", "run").read_text(encoding="utf-8")
    assert install.replace("python3 -m pip install ", "") in ci.replace("--quiet --disable-pip-version-check ", "")
    assert run.replace("python3", "python") + "\n" in ci
    pins = dict(line.split("==") for line in Path(ROOT, "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    installed = {dist.metadata["Name"].lower().replace("_", "-"): dist.version for dist in distributions()}
    assert {name: (installed[name], pin) for name, pin in pins.items()
            if name in installed and installed[name] != pin} == {}

    (quick,) = commands(readme.block("quick-loop"))
    assert shlex.split(run) == shlex.split(quick)[:3] == ["python3", "-m", "pytest"]
    # Collected on two files, to stay quick: BottleCRM's own tests (all marked) and this one.
    done = subprocess.run([sys.executable, "-m", "pytest", *shlex.split(quick)[3:], "--collect-only", "-q",
                           "-p", "no:cacheprovider", "tests/test_target_bottlecrm.py", "tests/test_readme.py"],
                          cwd=ROOT, env=with_path(BIN), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    tests = [line for line in done.stdout.splitlines() if "::" in line]
    counts = re.search(r"^(\d+)/(\d+) tests collected \((\d+) deselected\)", done.stdout, flags=re.M)
    assert counts, done.stdout[-500:]
    kept, everything, deselected = map(int, counts.groups())
    assert kept == len(tests) and kept + deselected == everything and deselected > 0
    assert f"tests/test_readme.py::{test_every_readme_block_is_marked_and_run_by_a_test.__name__}" in tests
    assert [test for test in tests if test.startswith("tests/test_target_bottlecrm.py::")] == []  # all marked


# --- serving a real CRM: BottleCRM ---------------------------------------------------------

@pytest.fixture
def real_crm(bottlecrm_env: dict[str, str]) -> dict[str, str]:
    """The placeholders of "Serving a real CRM" replaced by the BottleCRM the tests start."""
    return {"https://crm.example.com": bottlecrm_env["BOTTLECRM_URL"],
            "bcrm_pat_...": bottlecrm_env["BOTTLECRM_TOKEN"]}


def model_answer(url: str, secret: str) -> requests.Response:
    return requests.get(url + "/api/v1/meta/object/customer", headers={"Authorization": secret}, timeout=30)


@pytest.mark.slow
@pytest.mark.bottlecrm
def test_serving_a_real_crm_with_python_and_with_mapper_serve(real_crm: dict[str, str], tmp_path: Path) -> None:
    block = readme.block("serve-real-crm")
    *exports, serve = commands(block)
    assert "# or: mapper serve --mapping ..." in block
    for command in (serve, serve.replace("python3 serve.py", "mapper serve", 1)):
        port = free_port()
        script = readme.localise("\n".join([*exports, command]), {**real_crm, "--port 8080": f"--port {port}"})
        url = f"http://127.0.0.1:{port}"
        with readme.running(script, with_path(BIN), url, str(tmp_path / "serve.log")) as server:
            assert "Serving default: BottleCRM (mappings/bottlecrm.yaml)" in server.text()
            answer = model_answer(url, README_KHOROS_SECRET)
            assert answer.status_code == 200, answer.text
            assert model_answer(url, "another-secret").status_code == 401


def _serve_processes(group: int, expected: int, wait: float = 15.0) -> list[str]:
    """The ``serve.py`` processes of a process group. The first worker may answer before the
    second is forked on a loaded machine, so the count is read again until it settles."""
    deadline = time.monotonic() + wait
    while True:
        lines = subprocess.run(["ps", "-o", "pid=,args=", "-g", str(group)], capture_output=True,
                               text=True, timeout=10).stdout.splitlines()
        found = [line for line in lines if "serve.py" in line and not line.split(None, 1)[1].startswith("bash")]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.bottlecrm
def test_the_server_options_and_gunicorn_by_hand(real_crm: dict[str, str], tmp_path: Path) -> None:
    *exports, _serve = commands(readme.block("serve-real-crm"))
    (serve,) = commands(readme.block("serve-options"))
    port = free_port()
    script = readme.localise("\n".join([*exports, serve]), {**real_crm, "--port 8080": f"--port {port}"})
    url = f"http://127.0.0.1:{port}"
    with readme.running(script, with_path(BIN), url, str(tmp_path / "options.log")) as server:
        assert "(2 processes x 128 threads;" in server.text()
        pythons = _serve_processes(server.process.pid, expected=3)
        assert len(pythons) == 3, pythons  # the master and its 2 workers
        assert model_answer(url, README_KHOROS_SECRET).status_code == 200

    (by_hand,) = commands(readme.block("gunicorn-by-hand"))
    port = free_port()
    script = readme.localise("\n".join([*exports, by_hand]), real_crm)
    url = f"http://127.0.0.1:{port}"
    env = with_path(BIN, MAPPER_BIND=f"127.0.0.1:{port}", MAPPER_WORKERS="1", MAPPER_THREADS="4")
    with readme.running(script, env, url, str(tmp_path / "gunicorn.log")):
        assert model_answer(url, README_KHOROS_SECRET).status_code == 200
        assert model_answer(url, "another-secret").status_code == 401


# --- registering with Khoros ---------------------------------------------------------------

def test_the_registration_uses_the_secret_the_server_is_given(demo_env: dict[str, str]) -> None:
    """Khoros cannot be reached from here: check the request is what the server answers to.
    Khoros calls instanceUrl plus each operation path, with authHeaderValue as Authorization."""
    request_line, body = readme.block("register").split("\n", 1)
    method, url = request_line.split()
    assert (method, url) == ("POST", "https://api.spredfast.com/v2/crm/admin/custom")
    registration = json.loads(body)
    assert set(registration) == {"name", "instanceUrl", "authHeaderValue"}
    exports = readme.block("serve-real-crm")
    assert f"MAPPER_AUTH_TOKENS='{registration['authHeaderValue']}'" in exports  # the same secret on both sides
    path = registration["instanceUrl"].split("crm-bridge.example.com", 1)[1]
    rotating = f"{registration['authHeaderValue']},the-next-secret"  # while rotating: both accepted
    app = create_app(mapping_path=os.path.join(ROOT, "mappings", "demo.yaml"), tokens=parse_tokens(rotating),
                     environ={**demo_env, "MAPPER_LOG_LEVEL": "WARNING"})
    server = LiveServer(app).start()
    try:
        for secret, status in ((registration["authHeaderValue"], 200), ("the-next-secret", 200), ("old", 401)):
            answer = requests.get(f"{server.url}{path}/meta/object/case", headers={"Authorization": secret},
                                  timeout=30)
            assert answer.status_code == status, answer.text
    finally:
        server.stop()


# --- writing a mapping, the workbench, re-recording -----------------------------------------

def test_validate_reports_every_problem_as_file_line_key_message(tmp_path: Path) -> None:
    (command,) = commands(readme.block("validate"))
    (tmp_path / "mappings").mkdir()
    shutil.copy(os.path.join(ROOT, "tests", "mappings", "bad", "three-problems.yaml"),
                tmp_path / "mappings" / "my-crm.yaml")
    done = readme.shell(command, with_path(BIN), cwd=str(tmp_path))
    *problems, summary = done.stderr.splitlines()
    assert done.returncode == 1 and len(problems) == 3, done.stderr
    assert summary == "1 of 1 mapping file(s) have problems."
    assert all(re.match(r"mappings/my-crm\.yaml:\d+: \S+: .+", line) for line in problems), problems
    shutil.copy(os.path.join(ROOT, "mappings", "json-server.yaml"), tmp_path / "mappings" / "my-crm.yaml")
    done = readme.shell(command, with_path(BIN), cwd=str(tmp_path))
    assert done.returncode == 0 and done.stdout.startswith("mappings/my-crm.yaml: ok ("), done.stderr


def test_the_workbench_from_init_to_replay(demo_env: dict[str, str], tmp_path: Path) -> None:
    """Stage 1 on Pipedrive's description (its notes are in a second file, given too, as the
    README says); stages 2 and 3 need a CRM, so they run on the demo CRM's mapping, copied to
    mappings/my-crm.yaml as an integrator's finished mapping."""
    stages = re.split(r"^# \d\. .*$", readme.block("workbench"), flags=re.M)[1:]
    assert len(stages) == 3
    (tmp_path / "mappings").mkdir()
    env = with_path(BIN, **demo_env)
    init, validate = commands(stages[0])
    done = readme.shell(readme.localise(init, {"openapi.yaml": " ".join(SPECS)}), env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    done = readme.shell(validate, env, cwd=str(tmp_path))
    todos = [line for line in done.stderr.splitlines() if ": left to fill in: " in line]
    assert done.returncode == 1 and len(todos) == len(FILLS), done.stderr
    assert all(re.match(r"mappings/my-crm\.yaml:\d+: ", line) for line in todos)

    shutil.copy(os.path.join(ROOT, "mappings", "demo.yaml"), tmp_path / "mappings" / "my-crm.yaml")
    best_match, get_case = commands(stages[1])
    done = readme.shell(best_match, env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "- step 'by email' (mappings/my-crm.yaml:" in done.stdout  # every step is shown, the skipped too
    assert "skipped: its 'when' is false" in done.stdout
    assert '"email": "jane@example.com"' in done.stdout.split("answer 200:")[1]
    done = readme.shell(get_case, env, cwd=str(tmp_path))
    assert "answer 404 not_found: No case 42" in done.stdout  # the demo has no case 42: an error is recorded too
    assert done.returncode == 1 and list((tmp_path / "recordings" / "my-crm").iterdir())

    (replay,) = commands(stages[2])
    done = readme.shell(replay, clean_environ(PATH=os.environ["PATH"]), cwd=str(tmp_path))  # no CRM needed
    assert done.returncode == 0 and "All 1 cases of 1 recording(s) pass." in done.stdout, done.stdout + done.stderr


@pytest.mark.slow
def test_re_recording_writes_recordings_that_replay(tmp_path: Path) -> None:
    """Run on the demo's scenario only and into a temporary folder (the full command rewrites
    every recording of the checkout and starts BottleCRM): the same files are written, and
    they replay."""
    (command,) = commands(readme.block("re-record"))
    into = tmp_path / "recordings"
    done = readme.shell(f"{command} -k demo -p no:cacheprovider --record-into {into}", with_path(BIN),
                        timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    committed = sorted(path.name for path in Path(ROOT, "tests", "recordings", "demo").iterdir())
    assert sorted(path.name for path in (into / "demo").iterdir()) == committed
    replay = subprocess.run([os.path.join(BIN, "mapper"), "test", str(into)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert replay.returncode == 0, replay.stdout + replay.stderr


# --- the console ---------------------------------------------------------------------------

def test_the_console_command_serves_the_console_and_the_metrics_to_the_admin_token(tmp_path: Path) -> None:
    (command,) = commands(readme.block("console"))
    token = re.search(r"='([^']+)'", command)
    assert token
    port = free_port()
    env = with_path(BIN, MAPPER_PORT=str(port), DEMO_CRM_DATA=str(tmp_path / "demo-data"),
                    MAPPER_WORKERS="1", MAPPER_THREADS="4")
    url = f"http://127.0.0.1:{port}"
    with readme.running(command, env, url, str(tmp_path / "console.log")):
        page = requests.get(url + "/console", timeout=30)
        assert page.status_code == 200 and "<html" in page.text.lower()
        admin = {"Authorization": f"Bearer {token.group(1)}"}
        setup = requests.get(url + "/console/api/setup", headers=admin, timeout=30)
        assert setup.status_code == 200, setup.text
        assert requests.get(url + "/console/api/setup", timeout=30).status_code == 401
        assert requests.get(url + "/metrics", headers=admin, timeout=30).status_code == 200  # the same token
