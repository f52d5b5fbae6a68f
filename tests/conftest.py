"""Fixtures shared by the core and the widget tests.

Kept free of TensorFlow and Qt: it is loaded by both pytest invocations
(``tests --ignore=tests/widgets`` and ``tests/widgets`` under ``xvfb-run -a``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Real slide files shipped with the tests (origin and licence: ``tests/data/README.md``).
DATA = ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def slide_fixtures() -> Path:
    """The folder of real slide files (``boxes.tiff``, ``small.svs``): ``tests/data``.

    They are part of the repository, so a fresh clone runs every test that
    reads them; a missing file is a failure, not a skip.
    """
    for name in ("boxes.tiff", "small.svs"):
        assert (DATA / name).is_file(), f"{DATA / name} is missing from the repository"
    return DATA
