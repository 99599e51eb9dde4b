"""JupyterLab tests: `jupyter lab` as a real subprocess, Debian's Chromium driven by Playwright.

The browser is the system one (``/usr/bin/chromium``, installed by ``make browser``);
Playwright never downloads a browser here. Screenshots go to ``build/test-artifacts/``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import CHROMIUM, UI_TIMEOUT_MS, FreshInstall, save_screenshot


@pytest.fixture(scope="package")
def browser():
    """Headless Debian Chromium through Playwright, shared by the lab tests."""
    from playwright.sync_api import expect, sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed; run `make browser` (apt-get install chromium)")
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="package")
def fresh_install(tmp_path_factory) -> FreshInstall:
    """The wheel of this checkout installed into a new venv (built once for the lab tests)."""
    return FreshInstall.make(tmp_path_factory.mktemp("wheel"))


@pytest.fixture
def page(browser, request):
    """A fresh browser page; on failure a screenshot of it is saved as a test artifact."""
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield page
    finally:
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            save_screenshot(page, f"{request.node.name}-failed")
        context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call = report
    return report
