"""Debian's Chromium (never a downloaded browser), the way every browser test launches it (experiments/browser.py)."""

from experiments.browser import CHROMIUM, CHROMIUM_ARGS, chromium  # noqa: F401
