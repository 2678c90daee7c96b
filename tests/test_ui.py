"""The MLflow UI, as a user opens it: a real sweep, `resnet-sweep ui`, headless Chromium.

The runs table must show the sweep's parent run with its trials nested under it. Needs Debian's
Chromium and its driver (`apt-get install chromium chromium-driver`, as .ci/run does); skipped
without them. RESNET_SWEEP_UPDATE_SCREENSHOT=1 writes the screenshot to docs/mlflow-ui.png.
"""

import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.cli import main
from tests.support import REPO, cli, descendants, migrated_store

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# No network: nothing may phone home, and Selenium Manager must never try to download a driver.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH, HEIGHT = 1400, 900
# What `run quickstart.yaml --smoke-test` trains: the first 4 grid points (depth 20 and 32).
TRIALS = {"resnet20-basic-A-lr0.1-s0", "plain20-basic-lr0.1-s0", "resnet32-basic-A-lr0.1-s0", "plain32-basic-lr0.1-s0"}
RUN_NAME_COL = '[col-id="attributes.`Run Name`"]'


def require_chromium():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not found: install Debian's headless browser with "
            f"`apt-get install chromium chromium-driver` (.ci/run does)"
        )
    pytest.importorskip("selenium", reason="selenium is a test dependency: pip install -e '.[test]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 90) -> None:
    """mlflow ui starts 4 uvicorn workers and a job runner: ~35 s on two busy cores."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`resnet-sweep ui` exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"no answer from {url}/health after {timeout:.0f} s:\n{log.read_text()}")


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """The UI is a process tree (resnet-sweep → mlflow ui → uvicorn workers, huey consumers)."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    proc.wait(timeout=10)  # reap the leader so that only live members keep the group
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def new_browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")  # fresh: no stored MLflow UI settings
    options.add_argument(f"--window-size={WIDTH},{HEIGHT}")
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    # --window-size counts the (invisible) window frame: pin the viewport, hence the screenshot.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    driver.set_page_load_timeout(60)
    return driver


def tidy_for_screenshot(driver) -> None:
    """Cosmetics only (close the assistant panel, full run names, error columns); best effort."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    steps = []

    def close_assistant():
        for button in driver.find_elements(
            By.CSS_SELECTOR, 'button[data-component-id="mlflow.assistant.chat_panel.close"]'
        ):
            if button.is_displayed():
                button.click()

    def widen_run_names():
        handle = driver.find_element(By.CSS_SELECTOR, f".ag-header-cell{RUN_NAME_COL} .ag-header-cell-resize")
        ActionChains(driver).click_and_hold(handle).move_by_offset(60, 0).move_by_offset(60, 0).release().perform()

    def show_error_columns():
        driver.find_element(By.CSS_SELECTOR, '[data-testid="column-selection-dropdown"]').click()
        for metric in ("val_error", "test_error"):
            driver.find_element(By.CSS_SELECTOR, f'.du-bois-light-tree-node-content-wrapper[title="{metric}"]').click()
            time.sleep(0.3)
        ActionChains(driver).send_keys(Keys.ESCAPE).perform()
        time.sleep(0.5)
        driver.execute_script(
            "const v = document.querySelector('.ag-body-horizontal-scroll-viewport'); v.scrollLeft = v.scrollWidth;"
        )

    def settle():
        driver.execute_script("document.activeElement && document.activeElement.blur();")
        ActionChains(driver).move_to_element_with_offset(
            driver.find_element(By.TAG_NAME, "body"), 0, HEIGHT // 2 - 20
        ).perform()

    for step in (close_assistant, widen_run_names, show_error_columns, settle):
        try:
            step()
        except WebDriverException as err:
            steps.append(f"{step.__name__}: {type(err).__name__}")
    if steps:
        print("screenshot cosmetics skipped:", "; ".join(steps))
    time.sleep(1.5)  # tooltips fade, columns render


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_mlflow_ui_shows_trials_nested_under_the_sweep(quickstart_sweep, tmp_path):
    require_chromium()
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    # 1. A real (tiny) sweep, as a user runs it, into ./mlflow.db and ./mlruns of its folder.
    out, sweep_dir = quickstart_sweep.ran, quickstart_sweep.cwd
    assert out.returncode == 0, out.stdout + out.stderr
    db = sweep_dir / "mlflow.db"
    assert db.is_file() and (sweep_dir / "mlruns").is_dir()

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("quickstart")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.info.run_name == "quickstart"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent_id = parents[0].info.run_id
    children = {r.info.run_name: r.info.run_id for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert set(children) == TRIALS
    assert len(runs) == 1 + len(TRIALS)

    # 2. The UI, the way users start it: in the sweep's folder.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "ui.log"
    with open(log, "w") as log_file:
        ui = subprocess.Popen(
            [str(Path(sys.executable).parent / "resnet-sweep"), "ui", "--port", str(port)],
            cwd=sweep_dir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    driver = None
    try:
        wait_healthy(ui, url, log)
        # The UI's server alone: MLflow's job runner (GenAI jobs, 8 processes) is not started.
        commands = []
        for pid in descendants(ui.pid):
            try:
                commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:  # ended meanwhile
                pass
        assert commands and not [c for c in commands if "mlflow.server.jobs" in c or "huey" in c], commands

        # 3. The runs table. MLflow 3.17 opens `#/experiments/<id>` on the GenAI overview (the
        # experiment has no mlflow.experimentKind tag): ask for the classic runs table.
        driver = new_browser(tmp_path / "chromium-profile")
        driver.get(f"{url}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
        wait = WebDriverWait(driver, 60, poll_frequency=0.5)

        def row(run_id):
            return f'.ag-pinned-left-cols-container div[row-id="{run_id}"]'

        def shown(run_id) -> bool:
            return bool(driver.find_elements(By.CSS_SELECTOR, row(run_id)))

        def page_text() -> str:
            return driver.find_element(By.TAG_NAME, "body").text

        try:
            wait.until(
                lambda d: shown(parent_id) and "quickstart" in d.find_element(By.CSS_SELECTOR, row(parent_id)).text
            )
        except TimeoutException:
            pytest.fail(f"the parent run 'quickstart' never appeared; the page said:\n{page_text()[:3000]}")

        # MLflow shows child runs collapsed under their parent: expand it.
        if not all(shown(c) for c in children.values()):
            assert not any(shown(c) for c in children.values()), "children half shown before expanding"
            assert not TRIALS & set(page_text().split()), "collapsed parent, yet child runs listed"
            toggles = driver.find_elements(By.CSS_SELECTOR, f"{row(parent_id)} {RUN_NAME_COL} button")
            assert toggles, "the parent run has no expand control: MLflow did not see its children"
            toggles[0].click()
        try:
            wait.until(lambda d: all(shown(c) for c in children.values()))
        except TimeoutException:
            pytest.fail(f"child runs not shown under the parent; the page said:\n{page_text()[:3000]}")
        text = page_text()
        assert "quickstart" in text
        assert TRIALS <= set(text.split()), text[:3000]

        # Nested, not merely listed: each trial's name sits indented under the sweep's.
        def name_x(run_id) -> int:
            return driver.find_element(By.CSS_SELECTOR, f'{row(run_id)} a[href*="/runs/{run_id}"]').location["x"]

        parent_x = name_x(parent_id)
        for name, run_id in children.items():
            assert name_x(run_id) >= parent_x + 12, f"{name} is not indented under 'quickstart'"
            assert not driver.find_elements(By.CSS_SELECTOR, f"{row(run_id)} {RUN_NAME_COL} button"), (
                f"{name} has children?"
            )

        # 4. The screenshot (docs/mlflow-ui.png only when asked to update it).
        tidy_for_screenshot(driver)
        assert TRIALS <= set(page_text().split())  # the cosmetics collapsed nothing
        if os.environ.get("RESNET_SWEEP_UPDATE_SCREENSHOT") == "1":
            shot = REPO / "docs" / "mlflow-ui.png"
            shot.parent.mkdir(exist_ok=True)
        else:
            shot = tmp_path / "mlflow-ui.png"
        assert driver.save_screenshot(str(shot))
        assert png_size(shot) == (WIDTH, HEIGHT)
        assert shot.stat().st_size > 20_000, "a blank page?"
    finally:
        if driver is not None:
            driver.quit()
        stop_group(ui)


def test_ui_on_a_busy_port_is_one_line_naming_port(workdir):
    (workdir / "mlflow.db").touch()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = cli("ui", "--port", str(port), cwd=workdir, timeout=60)
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.strip().splitlines() == [
        f"error: --port: {port} on 127.0.0.1 is not available (Address already in use); pass another --port"
    ], out.stderr


@pytest.mark.unit
def test_ui_with_a_job_runner_setting_mlflow_cannot_read_is_one_line(workdir, monkeypatch, capsys):
    """The UI leaves MLflow's job runner off unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION says
    otherwise; a value MLflow would fail on (with a traceback, after the UI's address was printed)
    is one line first."""
    (workdir / "mlflow.db").touch()
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "yes")
    assert main(["ui", "--port", str(free_port())]) == 2
    said = capsys.readouterr()
    assert said.out == "" and said.err.splitlines() == [
        "error: MLFLOW_SERVER_ENABLE_JOB_EXECUTION: 'yes' is not true or false"
    ]


@pytest.mark.unit
def test_the_ui_gets_its_store_by_the_environment_not_the_command_line(tmp_path, monkeypatch, capsys):
    """A database URI may hold a password: it must not be in the UI's command line (`ps` shows
    that to every account), only in its environment. Checked at the exec, in-process."""
    folder = tmp_path / "pass-word-in-path"
    folder.mkdir()
    uri = f"sqlite:///{migrated_store(folder)}"
    monkeypatch.setenv("MLFLOW_BACKEND_STORE_URI", "restored after the test")
    execs = []

    def execv(path, argv):
        execs.append((argv, dict(os.environ)))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execv", execv)
    with pytest.raises(SystemExit):
        main(["ui", "--tracking-uri", uri, "--port", str(free_port())])
    ((argv, env),) = execs
    assert argv[1:4] == ["-m", "mlflow", "ui"] and not [a for a in argv if "pass-word" in a], argv
    assert env["MLFLOW_BACKEND_STORE_URI"] == uri
    assert f"MLflow UI for {uri}" in capsys.readouterr().out
