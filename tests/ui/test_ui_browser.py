"""The web page in headless Chromium: compose, validate, launch, watch, stop, resume, runs, sweeps, chat.

The server is `python -m sft.ui` on a free loopback port with the tiny model, behind its password (each
page logs in first); the browser is Debian's Chromium driven by Playwright (its own browser download is
impossible offline). Screenshots of every tab go to outputs/test-artifacts/ui/ (or $SFT_TEST_ARTIFACTS).
The server and the browser are shared by the module; each test opens its own page (a fresh Gradio
session), and the tests that need a finished run get one from the `finished_run` fixture, so every test
runs alone or in any order.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, run_module

from sft.run_dir import RunDir

CHROMIUM = os.environ.get("SFT_CHROMIUM", "/usr/bin/chromium")
INSTALL = "install it with `sudo apt-get install chromium` (make test does this), or set SFT_CHROMIUM"
ARTIFACTS = Path(os.environ.get("SFT_TEST_ARTIFACTS", ROOT / "outputs" / "test-artifacts" / "ui"))
# Long enough to be watched and stopped part-way: 40 optimizer steps of micro-batch 2, evaluated every 5.
RUN = ["trainer.max_steps=40", "trainer.eval_steps=5", "data.max_samples=120", "probe.enabled=false"]
WAIT = 120_000  # ms; the machine may be busy
PASSWORD = "open-sesame-123"  # the page is served as on a shared machine: SFT_UI_PASSWORD set


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, server: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"sft.ui exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"sft.ui did not answer at {url} in {seconds:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium; the browser tests fail (never skip) with what to install when it is missing."""
    if not Path(CHROMIUM).is_file() and not shutil.which(CHROMIUM):
        pytest.fail(f"Chromium not found at {CHROMIUM}: {INSTALL}")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("Playwright for Python is missing: pip install -e '.[dev]' (make test does this)")
    return CHROMIUM


@contextlib.contextmanager
def serve_ui(tmp: Path, cache_dir: Path, *args: str, env: dict | None = None):
    """`python -m sft.ui` on a free loopback port with outputs in tmp; yields its URL, then stops it."""
    log, port = tmp / "server.log", _free_port()
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    command = [sys.executable, "-m", "sft.ui", f"port={port}", f"log_dir={tmp / 'outputs'}", *args]
    with open(log, "w") as sink:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def server(chromium, tmp_path_factory, cache_dir):
    """(base URL, outputs dir) of a password-guarded page serving the tiny model, stopped (with its runs)
    at the end."""
    tmp = tmp_path_factory.mktemp("ui")
    overrides = json.dumps(["model=tiny", "preset=conservative", *RUN])
    env = {"SFT_UI_PASSWORD": PASSWORD}
    with serve_ui(tmp, cache_dir, f"overrides={overrides}", env=env) as url:
        yield url, tmp / "outputs"


@pytest.fixture(scope="module")
def finished_run(server, cache_dir) -> Path:
    """A short finished run of the tiny model in the page's outputs, trained by `python -m sft.train`."""
    outputs = server[1]
    env = {**os.environ, "SFT_CACHE": str(cache_dir), "PROJECT_ROOT": str(outputs.parent)}
    before = set(outputs.glob("train/runs/*"))
    done = run_module(
        "sft.train",
        "model=tiny",
        "preset=conservative",
        "trainer=debug",
        "trainer.max_steps=4",
        "trainer.eval_steps=4",
        "optimizer.lr=3e-2",  # enough for the tuned model to answer differently from its base
        "data.max_samples=40",
        "probe.enabled=false",
        "logger=csv",
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = set(outputs.glob("train/runs/*")) - before
    assert (run / "summary.json").is_file()
    return run


@pytest.fixture(scope="module")
def browser(chromium):
    """Chromium, launched once for the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server):
    """A fresh Chromium page (its own context and Gradio session) on the server; screenshots to ARTIFACTS."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1500})
    # Gradio's login form posts here; the session cookie it sets then opens the page.
    assert context.request.post(f"{server[0]}/login", form={"username": "sft", "password": PASSWORD}).ok
    tab = context.new_page()
    tab.set_default_timeout(WAIT)
    tab.goto(server[0])
    _wait_command(tab, "sft.train")
    yield tab
    context.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _wait_command(page, text: str) -> str:
    page.wait_for_function(
        "t => (document.querySelector('#command textarea') || {}).value?.includes(t)", arg=text
    )
    return page.input_value("#command textarea")


def _pick(page, elem_id: str, option: str) -> None:
    """Choose an option of a Gradio dropdown the way a user does: open it, click the option."""
    page.click(f"#{elem_id} input")
    page.locator("[role=option]", has_text=re.compile(rf"^\W*{re.escape(option)}$")).click()


def _text(page, selector: str, pattern: str, timeout: float = WAIT) -> str:
    """Wait until the element's text matches `pattern`; return the text."""
    page.wait_for_function(
        "([s, p]) => new RegExp(p).test((document.querySelector(s) || {}).innerText || '')",
        arg=[selector, pattern],
        timeout=timeout,
    )
    return page.inner_text(selector)


def _points(page, series: str) -> int:
    found = re.search(rf"{series}: (\d+) points", page.inner_text("#run-status"))
    return int(found.group(1)) if found else 0


def test_compose_shows_options_from_conf_and_the_command(page):
    """Every group's options come from conf/; a preset fills the fields; the command line follows."""
    page.click("#group-model input")
    options = page.locator("[role=option]").all_inner_texts()
    page.keyboard.press("Escape")
    assert {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")} == {o.strip("✓\n ") for o in options}
    _pick(page, "group-preset", "aggressive")
    command = _wait_command(page, "preset=aggressive")
    page.wait_for_function("document.querySelector('#field-lora_rank input').value === '64'")
    assert page.input_value("#field-learning_rate input") in ("0.0001", "1e-4")
    assert "model=tiny" in command and "trainer.max_steps=40" in command
    _pick(page, "group-preset", "conservative")
    _wait_command(page, "preset=conservative")
    page.wait_for_function("document.querySelector('#field-lora_rank input').value === '8'")
    page.click(".label-wrap:has-text('composed config')")
    # The editor renders only the lines in view: the top of the composed YAML.
    assert "task_name: train" in _text(page, "#composed", "task_name")
    _shot(page, "train-composed")
    page.click(".label-wrap:has-text('composed config')")  # closed again: the later shots stay short


def test_bad_value_shows_an_error_beside_its_field_and_blocks_start(page):
    """A rank of -3 gets the validator's own message under the rank field; Start is disabled until fixed."""
    page.fill("#field-lora_rank input", "-3")
    error = _text(page, "#error-lora_rank", "positive")
    assert "lora.r=-3" in error
    page.wait_for_function("document.querySelector('#start').disabled")
    _shot(page, "train-validation-error")
    page.fill("#field-lora_rank input", "4")
    page.wait_for_function("!document.querySelector('#start').disabled")
    assert page.inner_text("#error-lora_rank").strip() == ""
    assert "preset.lora_rank=4" in _wait_command(page, "preset.lora_rank=4")


def test_outside_path_is_refused(page):
    """A path outside the outputs and data locations is refused beside the overrides box."""
    extra = page.input_value("#extra textarea, #extra input")
    page.fill("#extra textarea, #extra input", f"{extra} +data.datasets.mine.path=/etc/passwd")
    assert "outside the locations" in _text(page, "#error-extra", "outside")
    page.wait_for_function("document.querySelector('#start').disabled")
    page.fill("#extra textarea, #extra input", extra)
    page.wait_for_function("!document.querySelector('#start').disabled")


def test_launch_watch_stop_and_resume(page, server):
    """Start a run, see the loss chart fill live, stop it (checkpoint), resume it to the end."""
    page.click("#start")
    _text(page, "#run-status", r"running")
    page.wait_for_function(
        "() => /train loss: ([3-9]|\\d\\d+) points/.test(document.querySelector('#run-status').innerText)"
    )
    assert "tokens/s" in page.inner_text("#run-status") and "ETA" in page.inner_text("#run-status")
    page.wait_for_selector("#loss-plot canvas, #loss-plot svg")  # the chart draws a moment after its data
    assert "effective batch" in page.input_value("#log textarea")
    _shot(page, "train-running")
    page.click("#stop")
    status = _text(page, "#run-status", r"stopped|finished")
    run = server[1] / page.locator("#watch input").input_value()
    assert run.parent == server[1] / "train" / "runs"
    assert "stopped" in status, f"the run finished before Stop took effect: {status}"
    step = json.loads((run / "progress.json").read_text())["step"]
    assert 0 < step < 40 and (run / "checkpoints" / "last.ckpt").is_file()
    _shot(page, "train-stopped")
    page.wait_for_function("!document.querySelector('#resume').disabled")
    page.click("#resume")
    _text(page, "#run-status", r"finished", timeout=360_000)  # the rest of 40 steps on a busy machine
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 40
    curve = RunDir(run).metrics()["step"]  # the part before the stop is kept
    assert (run / "csv" / "metrics.1.csv").is_file() and curve.min() == 0 and curve.max() >= 39
    assert _points(page, "val loss") >= 2
    _shot(page, "train-finished")


def test_runs_table_lists_the_run_and_overlays_curves(page, finished_run):
    """The run is in the Runs tab with its status and metrics; selecting it draws its curve."""
    page.get_by_role("tab", name="Runs").click()
    run = f"train/runs/{finished_run.name}"
    table = _text(page, "#runs-table", re.escape(run))
    assert "finished" in table and "tiny" in table and "conservative" in table
    _pick(page, "overlay-pick", run)
    page.wait_for_selector("#overlay-plot canvas, #overlay-plot svg")
    _shot(page, "runs")


def _bot_text(page, box: str) -> str:
    """The text of the one bot message in a chat box."""
    (reply,) = page.locator(f"{box} [data-testid=bot]").all_inner_texts()
    return reply


def test_chat_with_the_run_beside_its_base(page, finished_run):
    """The finished run and its base model answer the same prompt side by side: each box holds the prompt
    and that model's own greedy reply, as sft.ui.compare produces it outside the page."""
    from sft.ui.compare import Comparison

    run = f"train/runs/{finished_run.name}"
    page.get_by_role("tab", name="Chat").click()
    page.wait_for_function("document.querySelector('#chat-run input').value.includes('train/runs/')")
    _pick(page, "chat-run", run)
    page.click("#chat-load")
    assert run in _text(page, "#chat-status", "Loaded")
    page.fill("#chat-prompt textarea", "Who are you?")
    page.click("#chat-send")
    for box in ("#chat-tuned", "#chat-base"):
        assert "Who are you?" in _text(page, box, "Who are you")
    # Both replies are streamed in full (the base one after the tuned one) and the prompt box is cleared.
    page.wait_for_function(
        "document.querySelectorAll('#chat-base [data-testid=bot]').length === 1"
        " && document.querySelector('#chat-prompt textarea').value === ''"
    )
    *_, (tuned, base) = Comparison(finished_run, max_new_tokens=128).ask("Who are you?")  # the page's default
    tuned_text, base_text = _bot_text(page, "#chat-tuned"), _bot_text(page, "#chat-base")

    # Only letters and digits are compared: the page renders each reply as Markdown.
    def words(text: str) -> str:
        return re.sub(r"[\W_]", "", text)

    assert words(tuned) != words(base)  # so the boxes cannot pass by showing one model twice
    assert words(tuned_text) == words(tuned) and words(base_text) == words(base)
    _shot(page, "chat")


def test_sweep_runs_trials_and_shows_the_best(page, server):
    """A two-trial Optuna sweep over a sweeps/ space, its trials and best one read from the study."""
    page.get_by_role("tab", name="Train").click()
    page.fill("#extra textarea, #extra input", "trainer.max_steps=2 data.max_samples=40 probe.enabled=false")
    _wait_command(page, "trainer.max_steps=2")
    page.get_by_role("tab", name="Sweeps").click()
    page.fill("#n-trials input", "2")
    page.fill("#study-name textarea, #study-name input", "ui_test")
    page.click("#start-sweep")
    _text(page, "#sweep-status", "Started")
    best = _text(page, "#best-trial", r"best trial \d")
    assert best.startswith("ui_test")
    page.wait_for_function(
        "() => (document.querySelector('#trials-table').innerText.match(/COMPLETE/g) || []).length >= 2",
        timeout=240_000,
    )
    _shot(page, "sweeps")


def test_a_password_guards_the_page(server):
    """With SFT_UI_PASSWORD set, Gradio's login stands before the page and its API."""
    url, outputs = server
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/config", timeout=10)
    assert refused.value.code == 401

    def login(password: str) -> int:
        form = urllib.parse.urlencode({"username": "sft", "password": password}).encode()
        try:
            return urllib.request.urlopen(f"{url}/login", data=form, timeout=10).status
        except urllib.error.HTTPError as err:
            return err.code

    assert login("wrong") == 400
    assert login(PASSWORD) == 200
    assert "password required (user 'sft'" in (outputs.parent / "server.log").read_text()
