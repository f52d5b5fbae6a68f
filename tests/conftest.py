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


@pytest.fixture
def prediction_writer(tmp_path, monkeypatch):
    """A function writing a finished 1/``d`` prediction store of a level-0 truth image.

    Level 0 of the store samples the truth at its pixels' block centres, as a
    perfect model would; the pyramid is built by the real ``build_pyramids``
    with the minimum level side lowered to 64 px, so small stores get levels.
    ``write(truth, d=4, name="pred")`` returns the store's path.
    """
    from napari_gigapixel.core import prediction_store as ps

    shapes = ps.pyramid_shapes
    monkeypatch.setattr(ps, "pyramid_shapes", lambda shape, min_side=64: shapes(shape, 64))

    def write(truth, d: int = 4, name: str = "pred") -> str:
        h, w = truth.shape
        level0 = truth[d // 2 :: d, d // 2 :: d].astype("uint8")
        meta = {
            "kind": "prediction",
            "downsample": float(d),
            "slide_shape": [h, w],
            "offset": [0, 0],
            "region_shape": [h, w],
            "threshold": 0.5,
        }
        tmp, out = str(tmp_path / f"{name}.partial"), str(tmp_path / f"{name}.zarr")
        prob, mask = ps.create_store(tmp, level0.shape, 64, meta)
        prob[:], mask[:] = level0 * 255, level0
        ps.build_pyramids(tmp)
        ps.mark_complete(tmp)
        ps.commit_store(tmp, out, overwrite=False)
        return out

    return write


@pytest.fixture
def slanted_prediction(prediction_writer):
    """A 1/4 prediction of a 600 x 1600 slide whose tissue ends at a slanted edge.

    Returns
    -------
    (store path, truth, edge): ``truth`` is the level-0 boolean image (tissue
    left of the edge); ``edge(y)`` the level-0 column (pixel corners) where the
    continuous row ``y`` turns from tissue to glass.
    """
    import numpy as np

    def edge(y):
        return 1500.3 - 0.83 * y

    yy, xx = np.mgrid[:600, :1600]
    truth = xx + 0.5 < edge(yy + 0.5)
    return prediction_writer(truth, 4, "slanted"), truth, edge
