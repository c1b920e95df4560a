"""Debian's Chromium (never a downloaded browser), the way every browser test launches it (experiments/browser.py),
and Playwright's sync API for a browser test module."""

import os

import pytest

from experiments.browser import CHROMIUM, CHROMIUM_ARGS, chromium  # noqa: F401


def playwright_sync_api():
    """Return playwright.sync_api; without the package, skip the calling module (fail under RTLAB_REQUIRE_ALL=1)."""
    try:
        from playwright import sync_api
    except ImportError:
        if os.environ.get("RTLAB_REQUIRE_ALL") == "1":
            raise
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')", allow_module_level=True)
    return sync_api
