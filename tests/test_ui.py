"""The web app as a user meets it: ``python -m finetune.ui`` started as a process, driven in headless Chromium
(Playwright over Debian's ``chromium``). The demo recipe is prepared in the form (an invalid value shows the parser's
message), previewed, launched with ``training.max_steps=2``, watched until it finishes, chatted with through
``/v1``, exported to GGUF; a second run is stopped and resumed from the page, a launch into its busy folder is
refused, and the two runs are compared on one chart. Then the guards: other origins, paths outside the project.

The first run trains the demo recipe with its data, template and settings on a tiny random body with SmolLM2's
tokenizer (``model.path`` set in the form, as a user points a recipe at another model): the app is what is tested,
and the real SmolLM2's before/after generations and f16 export took most of a minute. The stopped and resumed run
keeps the real SmolLM2, whose steps are long enough to be stopped in the middle.

``FINETUNE_SCREENSHOTS=docs/images pytest tests/test_ui.py`` also saves the screenshots in docs/web-app.md.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from finetune.runs.files import claim_holder

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="needs headless Chromium: apt-get install -y chromium")
SCREENSHOTS = os.environ.get("FINETUNE_SCREENSHOTS")
MINUTE = 60_000  # Playwright waits in milliseconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_llama) -> Path:
    """A project folder as a user's checkout has it: the recipes and the demo data; and a model of the user's own
    (the tiny body) under ``models/``."""
    project = tmp_path_factory.mktemp("project")
    shutil.copytree(ROOT / "recipes", project / "recipes")
    (project / "data").mkdir()
    (project / "data" / "unicode_names").symlink_to(ROOT / "data" / "unicode_names")
    shutil.copytree(tiny_llama, project / TINY)
    return project


TINY = "models/tiny-llama"
"""The body the first run trains, relative to the project (the app runs the command line there)."""


def start_ui(project: Path, *args: str) -> tuple[subprocess.Popen, str, Path]:
    port, log = free_port(), project / f"ui-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "finetune.ui", "--project", str(project), "--port",
                                    str(port), *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            httpx.get(url + "/favicon.ico", timeout=2)
            return process, url, log
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(log.read_text())


@pytest.fixture(scope="module")
def ui(project):
    process, url, log = start_ui(project)
    yield url
    process.terminate()
    process.wait(timeout=30)
    for pid in _children_of_runs(project):  # runs outlive the app by design; not the test session
        os.kill(pid, 15)


def _children_of_runs(project: Path) -> list[int]:
    runs = project / "runs"
    holders = (claim_holder(folder) for folder in runs.iterdir() if folder.is_dir()) if runs.is_dir() else ()
    return [pid for pid in holders if pid is not None]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(browser, ui):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(ui)
    yield page
    assert errors == []  # no script error on any page


def shot(page, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"ui-{name}.png"))


def set_field(page, key: str, value: str) -> None:
    field = page.locator(f".field[data-key='{key}'] input, .field[data-key='{key}'] select")
    if field.evaluate("node => node.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)
    field.dispatch_event("change")


def open_recipe(page, path: str) -> None:
    page.click("nav button[data-view='recipes']")
    page.click(f"#recipe-list button[data-recipe='{path}']")
    page.wait_for_selector(".field[data-key='training.max_steps']")


def field_error(page, key: str) -> str:
    return page.text_content(f".field[data-key='{key}'] .error")


def wait_for_state(page, state: str, timeout: int = 10 * MINUTE) -> None:
    page.wait_for_function(f"document.querySelector('#detail-state')?.dataset.state === '{state}'", timeout=timeout)


def launch(page) -> str:
    """Press Launch; the page switches to the new run's details. Returns the run's folder name."""
    before = page.get_attribute("#run-detail", "data-run")
    page.click("#launch-button")
    page.wait_for_function(f"(document.querySelector('#run-detail').dataset.run || '') !== '{before or ''}'",
                           timeout=MINUTE)
    return page.get_attribute("#run-detail", "data-run")


def test_demo_recipe_prepared_previewed_launched_watched_chatted_with_and_exported(page, ui, project):
    open_recipe(page, "recipes/smollm2_lora.py")
    assert "make demo" in page.text_content("pre.header")  # the recipe's header comment
    # An invalid value: the override parser's own message, beside the field.
    set_field(page, "training.learning_rate", "abc")
    page.wait_for_function("document.querySelector(\".field[data-key='training.learning_rate'] .error\")"
                           ".textContent.length > 0")
    assert field_error(page, "training.learning_rate") == (
        "training.learning_rate='abc': expected a float, e.g. training.learning_rate=1e-4")
    set_field(page, "training.learning_rate", "0.001")
    page.wait_for_function("document.querySelector(\".field[data-key='training.learning_rate'] .error\")"
                           ".textContent === ''")
    set_field(page, "training.max_steps", "2")
    set_field(page, "training.logging_steps", "1")
    set_field(page, "model.path", TINY)

    page.click("#preview-button")
    page.wait_for_selector("#audit", timeout=2 * MINUTE)
    audit = page.text_content("#audit")
    assert "examples360" in audit.replace(" ", "") and "templatechatml" in audit.replace(" ", "")
    supervised = page.locator(".example .supervised")
    assert supervised.count() == 5  # one answer per previewed example, highlighted
    assert supervised.first.text_content().endswith("<|im_end|>")  # the end of turn is trained
    page.locator("#preview h3").scroll_into_view_if_needed()
    shot(page, "recipes")

    run = launch(page)
    # Watched while it trains: the loss chart gets its points (logged every step), then the run finishes.
    page.wait_for_function("Number(document.querySelector('#chart-loss')?.dataset.points) > 0", timeout=3 * MINUTE)
    wait_for_state(page, "finished")
    assert int(page.get_attribute("#chart-loss", "data-points")) >= 4  # 2 train losses, 2 eval losses
    page.wait_for_selector(".samples td", timeout=MINUTE)
    assert page.locator(".samples tr").count() == 1 + 8  # the header + the recipe's 8 before/after samples
    shot(page, "runs")

    # Chat through /v1: the streamed answer is the server's greedy answer to the same message.
    page.click(f"#runs-table tr[data-run='{run}'] button.chat")
    question = "Give the official Unicode name of this character.\n\nA"
    page.fill("#chat-input", question)
    page.click("#chat-send")
    page.wait_for_selector(".msg.assistant.done", timeout=2 * MINUTE)
    answer = page.text_content(".msg.assistant.done")
    expected = httpx.post(ui + "/v1/chat/completions", timeout=120, json={
        "model": run, "messages": [{"role": "user", "content": question}], "max_tokens": 64, "temperature": 0,
    }).json()["choices"][0]["message"]["content"]
    assert answer == expected != ""
    shot(page, "chat")

    page.click("nav button[data-view='runs']")
    page.click(f"#runs-table tr[data-run='{run}'] a")
    page.wait_for_selector("#export-button")
    page.click("#export-button")
    page.wait_for_selector("#export-done", timeout=3 * MINUTE)
    gguf = project / "runs" / run / "export" / f"{run}-f16.gguf"
    assert gguf.read_bytes()[:4] == b"GGUF"
    assert (gguf.parent / f"{run}-f16.Modelfile").exists()


def test_stop_resume_busy_folder_comparison_and_reopening(page, project):
    open_recipe(page, "recipes/smollm2_lora.py")
    # Short steps (2 examples), so stopping, resuming and finishing take seconds, not minutes.
    for key, value in {"training.max_steps": "16", "training.per_device_train_batch_size": "2",
                       "training.logging_steps": "1", "training.eval_strategy": "no", "eval.generate": "false",
                       "eval.samples": "0"}.items():
        set_field(page, key, value)
    run = launch(page)
    page.wait_for_function("Number(document.querySelector('#chart-loss')?.dataset.points) >= 2", timeout=3 * MINUTE)
    # A second launch into the folder the run holds is refused, with the claim's message.
    open_recipe(page, "recipes/smollm2_lora.py")
    set_field(page, "training.output_dir", f"runs/{run}")
    page.click("#launch-button")
    page.wait_for_selector("#action-status .notice.bad", timeout=MINUTE)
    assert "in use by another run" in page.text_content("#action-status")

    page.click("nav button[data-view='runs']")
    page.click(f"#runs-table tr[data-run='{run}'] button.stop")
    wait_for_state(page, "stopped")
    assert len(list((project / "runs" / run).glob("checkpoint-*"))) == 1  # the step finished, one checkpoint saved
    page.click(f"#runs-table tr[data-run='{run}'] button.resume")
    wait_for_state(page, "running", timeout=MINUTE)
    page.click("nav button[data-view='runs']")
    page.click(f"#runs-table tr[data-run='{run}'] a")
    wait_for_state(page, "finished")
    assert "step 16 / 16" in page.text_content("#detail-state")

    for row in page.locator("#runs-table tbody tr").all()[:2]:
        row.locator("input.compare").check()
    page.wait_for_function("Number(document.querySelector('#compare-chart')?.dataset.points) > 0", timeout=MINUTE)
    legend = page.text_content("#compare")
    runs = [r.get_attribute("data-run") for r in page.locator("#runs-table tbody tr").all()[:2]]
    assert all(f"{name} train" in legend for name in runs)
    page.locator("#compare").scroll_into_view_if_needed()
    shot(page, "compare")

    # Another app over the same folder (the first closed and reopened) finds the runs the first one launched.
    process, url, _ = start_ui(project)
    try:
        again = {r["name"]: r["state"] for r in httpx.get(url + "/api/runs").json()}
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert again[run] == "finished" and set(runs) <= set(again)


def test_save_as_recipe_writes_a_recipe_the_command_line_loads(page, project):
    open_recipe(page, "recipes/smollm2_lora.py")
    set_field(page, "training.max_steps", "3")
    page.fill("#save-name", "my_demo")
    page.click("#save-button")
    page.wait_for_selector("#action-status .notice.good")
    from finetune.recipe_file import load_recipe

    saved = load_recipe(project / "recipes" / "my_demo.py")
    assert (saved.name, saved.training.max_steps) == ("my_demo", 3)
    assert saved.method == load_recipe(project / "recipes" / "smollm2_lora.py").method
    page.click("#save-button")  # again: the file exists and is kept
    page.wait_for_selector("#action-status .notice.bad")
    assert "exists" in page.text_content("#action-status")


def test_other_origins_paths_outside_and_missing_tokens_are_refused(ui, project):
    body = {"recipe": "recipes/smollm2_lora.py", "overrides": ["training.max_steps=1"]}
    httpx.post(ui + "/api/validate", json=body, timeout=120)  # (waits for the app's background import)
    other = httpx.post(ui + "/api/launch", json=body, headers={"Origin": "https://evil.example"})
    assert other.status_code == 403 and "another origin" in other.json()["error"]["message"]
    assert httpx.post(ui + "/api/launch", json=body, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert httpx.get(ui + "/api/recipes", headers={"Host": "evil.example"}).status_code == 403
    outside = httpx.post(ui + "/api/validate", json={"recipe": "../../etc/passwd", "overrides": []}).json()
    assert "outside" in outside["general"][0]
    escape = httpx.post(ui + "/api/launch", json={**body, "overrides": ["training.output_dir=/tmp/elsewhere"]})
    assert escape.status_code == 400 and "runs launched here go into a folder of" in escape.json()["error"]
    assert httpx.get(ui + "/api/runs/..%2F..%2Fetc").status_code in (400, 404)
    saved = httpx.post(ui + "/api/save", json={**body, "name": "../escape"})
    assert saved.status_code == 400 and not (project / "escape.py").exists()

    process, url, _ = start_ui(project, "--token", "s3cret")
    try:
        assert httpx.get(url + "/api/recipes").status_code == 401
        assert httpx.get(url + "/api/recipes", headers={"X-Finetune-Token": "s3cret"}).status_code == 200
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_run_that_fails_shows_its_error_line(ui):
    body = {"recipe": "recipes/smollm2_lora.py", "overrides": ["data.train=data/unicode_names/missing.jsonl"]}
    # (the first request that needs transformers waits for the app's import of it)
    launched = httpx.post(ui + "/api/launch", json=body, timeout=120)
    run = launched.json()["run"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        row = next(r for r in httpx.get(ui + "/api/runs").json() if r["name"] == run)
        if row["state"] not in ("starting", "running"):
            break
        time.sleep(1)
    assert row["state"] == "failed" and "missing.jsonl" in row["error"], row
    assert len(row["error"].splitlines()) == 1


def test_another_host_needs_a_token_and_the_app_starts_without_torch(project):
    done = subprocess.run([sys.executable, "-m", "finetune.ui", "--host", "0.0.0.0"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2 and "--token" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    # Quick to start: the app (routes, forms, run listing) imports neither torch nor transformers.
    probe = subprocess.run([sys.executable, "-c", "import sys, finetune.ui.app; "
                            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert probe.stdout.strip() == "[]", probe.stderr
