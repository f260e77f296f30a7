"""Tests import the fakes one way: `fakes.x` (tests/ is on the path through its conftest, with
`pytest` and `python -m pytest` alike). `tests.fakes.x` as well would load every fake module a
second time under another name: two FakeSlack classes, two registries, isinstance failing."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
OTHER_FORM = re.compile(r"^\s*(from|import)\s+tests\.fakes\b", re.M)


def test_no_test_imports_the_fakes_as_tests_fakes():
    offenders = [f"{path.relative_to(TESTS.parent)}:{text[:m.start()].count(chr(10)) + 1}"
                 for path in sorted(TESTS.rglob("*.py"))
                 for text in [path.read_text(encoding="utf-8")]
                 for m in OTHER_FORM.finditer(text)]
    assert offenders == [], "import the fakes as `fakes.x`, not `tests.fakes.x`: " + ", ".join(offenders)


def test_the_check_recognises_the_other_form():
    assert OTHER_FORM.search("x = 1\n    from tests.fakes.core import InstantClock\n")
    assert OTHER_FORM.search("import tests.fakes.waiting as waiting\n")
    assert not OTHER_FORM.search("from fakes.core import InstantClock\n")
