"""Every pyramid level of a prediction sits on the slide where its OME transforms say.

A level-``k`` pixel stands for a ``D x D`` block of level 0 (``D = 4 * 2^k`` for a
prediction at the model's output stride of 4); the store's NGFF metadata places it
there (scale ``D``, translation to the block centre). The test reads, row by row,
where each level puts a slanted tissue edge and compares it with the true edge:
every row within half a pixel of the level, and no systematic shift.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_gigapixel.core.prediction_store import open_prediction


def _declared_edges(level: np.ndarray, scale: float, shift: float, edge) -> tuple[np.ndarray, ...]:
    """Per row: the tissue edge the level shows and the true edge, in level-0 pixels.

    ``scale``/``shift`` are the NGFF transform (level-0 pixel-centre coordinates):
    pixel ``j`` is centred at ``shift + j * scale`` and spans ``scale`` pixels.
    """
    n = (level > 0).sum(axis=1)  # tissue is a run on the left of each row
    left = shift - (scale - 1) / 2  # level-0 column of pixel 0's first level-0 pixel
    shown = left + n * scale
    rows = np.arange(level.shape[0])
    y_centre = shift - (scale - 1) / 2 + (rows + 0.5) * scale
    return shown, edge(y_centre)


def test_every_level_sits_within_half_a_pixel(slanted_prediction):
    import json
    from pathlib import Path

    path, _, edge = slanted_prediction
    store = open_prediction(path)
    assert store.downsamples == [4.0, 8.0, 16.0, 32.0]
    attrs = json.loads((Path(path) / "labels" / "mask" / ".zattrs").read_text())
    report = {}
    for k, ds in enumerate(attrs["multiscales"][0]["datasets"]):
        (scale_t, shift_t) = ds["coordinateTransformations"]
        scale, shift = scale_t["scale"][1], shift_t["translation"][1]
        assert scale == store.downsamples[k] and shift == pytest.approx((scale - 1) / 2)
        for name, level in (("mask", store.mask[k]), ("probability", store.probability[k])):
            data = np.asarray(level)
            shown, true = _declared_edges(
                data >= (128 if name == "probability" else 1), scale, shift, edge
            )
            # Rows whose block lies inside the slide (600 rows) and whose edge is inside.
            rows = np.arange(data.shape[0])
            keep = ((rows + 1) * scale <= 600) & (true < data.shape[1] * scale - scale)
            err = (shown - true)[keep]
            report[(name, scale)] = (
                round(float(np.abs(err).max()), 2),
                round(float(err.mean()), 2),
            )
            # Every row: within half a pixel of this level (plus one level-0 pixel: the
            # store's level 0 samples the truth at a pixel next to its block centre).
            assert np.abs(err).max() <= scale / 2 + 1, (name, scale, report)
            # No systematic shift (level 0's -0.9 is the fixture's sampling, half a level-0
            # pixel per axis); [::2, ::2] subsampling gave about +1.8 * (scale - 4) / 2 here.
            assert abs(err.mean()) <= max(1.5, scale / 10), (name, scale, report)
    print(report)  # (max |error|, mean error) per (pyramid, level downsample)
