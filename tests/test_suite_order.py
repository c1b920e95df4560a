"""`make test`'s order: the modules conftest.LONGEST_FIRST names exist (a renamed one would silently go last again),
each once, and the Makefile keeps pytest-xdist from reordering them."""

from __future__ import annotations

from conftest import LONGEST_FIRST, ROOT


def test_the_longest_modules_named_first_exist_and_make_test_keeps_their_order():
    assert [m for m in LONGEST_FIRST if not (ROOT / m).is_file()] == []
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    assert "--dist loadscope --no-loadscope-reorder" in (ROOT / "Makefile").read_text()
