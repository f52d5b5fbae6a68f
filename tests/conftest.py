"""Fixtures shared by the core and the widget tests.

Kept free of TensorFlow and Qt: it is loaded by both pytest invocations
(``tests --ignore=tests/widgets`` and ``tests/widgets`` under ``xvfb-run -a``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Why the tests that read real slide files are skipped when those are absent.
NO_FIXTURES = (
    "real slide fixtures not found: expected ../shared/fixtures beside the repository "
    "(or set NAPARI_GIGAPIXEL_FIXTURES)"
)


def find_slide_fixtures() -> Path | None:
    """``shared/fixtures`` beside the repository (CI) or inside it, else ``tests/data``.

    The environment variable ``NAPARI_GIGAPIXEL_FIXTURES`` overrides all of them.

    Returns
    -------
    Path or None
        The folder holding ``boxes.tiff`` and the other real slide files, or
        None when it cannot be found.
    """
    env = os.environ.get("NAPARI_GIGAPIXEL_FIXTURES")
    for cand in ([Path(env)] if env else []) + [
        ROOT.parent / "shared" / "fixtures",
        ROOT / "shared" / "fixtures",
        ROOT / "tests" / "data",  # copies of the two files (see tests/data/README.md)
    ]:
        if (cand / "boxes.tiff").is_file():
            return cand
    return None


@pytest.fixture(scope="session")
def slide_fixtures() -> Path:
    """The folder of real slide files (``boxes.tiff``, ``small.svs``, ...).

    The test that asks for it is skipped, with the reason, when the folder is
    not found.
    """
    found = find_slide_fixtures()
    if found is None:
        pytest.skip(NO_FIXTURES)
    return found
