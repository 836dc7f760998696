"""The interactive notebooks in a real JupyterLab, driven in the system's headless Chromium.

``pytest -m browser``. Notebooks 08 (explorer) and 01 (walkthrough) are opened with
``INTERACTIVE=True`` on the smoke run's cached models and run through JupyterLab's own "Run All
Cells"; the test checks that the widgets rendered (no "Error displaying widget"), moves controls,
and asserts the figure under them changed. Screenshots: ``results/smoke/browser/``. Without
Chromium (Debian's ``chromium``; ``./run_all.sh --tests`` installs it when root) or Playwright the
test is skipped and says why.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tve_lib.lab import TEST_SETTINGS, start_lab, write_settings

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "results" / "smoke" / "browser"
CHROMIUM = os.environ.get("TVE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# a closed network: no background connections, no update checks (they stall the start)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.browser
NB = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"  # the notebook on show


def _prepare(nb: str, smoke_results: Path, out_dir: Path) -> str:
    """A copy of notebook ``nb`` with the smoke profile's parameters and ``INTERACTIVE=True`` injected."""
    import papermill as pm

    params = {"PROFILE": "smoke", "DEVICE": "cpu", "RESULTS_DIR": str(smoke_results.parent), "INTERACTIVE": True}
    pm.execute_notebook(str(REPO / "notebooks" / nb), str(out_dir / nb), parameters=params, prepare_only=True,
                        kernel_name="python3")
    return nb


def _run_all(page, nb: str, url: str, timeout_s: float) -> None:
    # a workspace of its own (?reset), so no notebook of an earlier test is restored beside this one
    page.goto(url.replace("/lab?", f"/lab/workspaces/{nb.split('_')[0]}/tree/{nb}?reset&"))
    page.wait_for_selector(".jp-Notebook", timeout=120_000)
    # the kernel has started when the status bar says so; "Run All" before that runs nothing
    page.locator("#jp-main-statusbar", has_text="Idle").wait_for(timeout=120_000)
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    deadline = time.time() + timeout_s
    while time.time() < deadline:  # done when every code cell shows its execution count
        time.sleep(2)
        prompts = [p.strip() for p in page.locator(f"{NB} .jp-CodeCell .jp-InputPrompt").all_inner_texts()]
        if prompts and all(p[1:-2].isdigit() for p in prompts):
            return
    page.screenshot(path=str(SHOTS / f"{nb.split('.')[0]}_timeout.png"), full_page=True)
    raise TimeoutError(f"{nb}: cells not all run after {timeout_s:.0f} s: {prompts}")


def _widget_image(page) -> str:
    img = page.locator(f"{NB} .widget-output img").last
    img.wait_for(timeout=120_000)
    return img.get_attribute("src")


def _wait_change(page, before: str, timeout_s: float = 120) -> str:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        now = _widget_image(page)
        if now != before:
            return now
        time.sleep(1)
    raise AssertionError("the figure under the widgets did not change")


def _no_widget_errors(page) -> None:
    text = page.locator(NB).inner_text()
    assert "Error displaying widget" not in text, "a widget did not render (front-end and kernel disagree?)"
    assert page.locator(f"{NB} .jupyter-widgets").count() > 0, "no widget rendered"


def _slider_right(page, label: str, presses: int) -> None:
    handle = page.locator(f"{NB} .widget-slider", has_text=label).locator(".noUi-handle").first
    handle.focus()
    for _ in range(presses):
        handle.press("ArrowRight")


@pytest.fixture(scope="module")
def lab(smoke_results, tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium; ./run_all.sh --tests installs "
                    "it when root): the JupyterLab browser test is skipped")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed: the browser test is skipped")
    from playwright.sync_api import sync_playwright

    nbdir = tmp_path_factory.mktemp("lab")
    for nb in ("08_explorer.ipynb", "01_pretrain_tve.ipynb"):
        _prepare(nb, smoke_results, nbdir)
    SHOTS.mkdir(parents=True, exist_ok=True)
    settings = write_settings(tmp_path_factory.mktemp("lab_settings"), TEST_SETTINGS)
    proc, url, _, _ = start_lab(nbdir, log=nbdir.parent / "lab.log", settings_dir=settings)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            yield browser, url
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)


def _open(lab, nb: str):
    """A new page with notebook ``nb`` run through JupyterLab, its widgets checked; ``(page, figure src)``."""
    browser, url = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    _run_all(page, nb, url, timeout_s=600)
    _no_widget_errors(page)
    return page, _widget_image(page)


def _shot(page, name: str) -> None:
    """A screenshot of the widget box with its figure (scrolled into view)."""
    box = page.locator(f"{NB} .widget-vbox", has=page.locator("img")).first
    box.screenshot(path=str(SHOTS / f"{name}.png"))


def test_explorer_widgets_render_and_respond_in_jupyterlab(lab):
    page, first = _open(lab, "08_explorer.ipynb")
    _shot(page, "08_explorer_before")
    dropdown = page.locator(f"{NB} .widget-dropdown", has_text="baseline").locator("select")
    options = dropdown.locator("option").all_inner_texts()
    current = dropdown.input_value()
    dropdown.select_option(next(o for o in options if o != current))
    second = _wait_change(page, first)
    _shot(page, "08_explorer_method")
    _slider_right(page, "sparsity", 2)
    _wait_change(page, second)
    _shot(page, "08_explorer_sparsity")
    _no_widget_errors(page)


def test_walkthrough_slider_renders_and_redraws_in_jupyterlab(lab):
    page, first = _open(lab, "01_pretrain_tve.ipynb")
    _shot(page, "01_walkthrough_before")
    _slider_right(page, "player", 3)
    _wait_change(page, first)
    _shot(page, "01_walkthrough_after")
    _no_widget_errors(page)
