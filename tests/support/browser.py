"""Headless Chromium for the tests that drive a page, and where their screenshots go.

The browser is Debian's ``chromium`` (``make system-deps`` installs it): playwright's
own browser download needs a network the test machines lack, so only its driver is
used. Screenshots land in ``artifacts/console/`` under the repository root (ignored by
git), where a person can look at what the page showed at each step of a test.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """One headless Chromium, closed (with its driver) when the block ends."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str, folder: str = "console") -> Path:
    """Save the whole page as ``artifacts/<folder>/<name>.png``; return its path."""
    path = ARTIFACTS / folder / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=path, full_page=True)
    return path
