"""Border weights: labels near the other class's weigh more in the loss, exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_gigapixel.core._array_cache import ArrayCache
from napari_gigapixel.core._train_data import (
    BORDER_FLAG,
    EXCLUDED,
    codes_yw,
    flag_borders,
    label_codes,
)
from napari_gigapixel.core.train_config import TrainConfig, TrainConfigError, _validate


def _blobs(shape, seed):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.normal(size=shape), 4.0) > 0


def _flags(codes: np.ndarray, kind: str, radius: float, band_rows: int) -> np.ndarray:
    cache = ArrayCache.wrap(codes.copy())
    flag_borders(cache, kind, radius, band_rows=band_rows)
    return cache.read(0, codes.shape[0], 0, codes.shape[1])


@pytest.mark.parametrize("kind", ["dense", "scribble"])
def test_flags_are_those_of_the_whole_label_map_whatever_the_bands(kind):
    tissue = _blobs((97, 131), 0)
    if kind == "dense":
        raw = tissue.astype(np.uint8)
    else:  # 0 unlabelled (a band), 1 background, 2 tissue
        raw = np.where(tissue, 2, 1).astype(np.uint8)
        raw[40:52] = 0
    codes = label_codes(raw, kind)
    whole = _flags(codes, kind, 4.0, band_rows=10_000)
    for band in (1, 5, 33):
        np.testing.assert_array_equal(_flags(codes, kind, 4.0, band), whole)
    # Reference: within 4 px (Euclidean) of a labelled pixel of the other class.
    y, w = codes_yw(codes, kind)
    tis, bg = (w > 0) & (y == 1), (w > 0) & (y == 0)
    near = (tis & (ndi.distance_transform_edt(~bg) <= 4)) | (
        bg & (ndi.distance_transform_edt(~tis) <= 4)
    )
    np.testing.assert_array_equal((whole & BORDER_FLAG) > 0, near)
    assert 0.05 < near.mean() < 0.8  # some border, not all of it
    # The full-resolution head's radius (16 px) takes the distance transform.
    wide = _flags(codes, kind, 16.0, band_rows=9)
    near16 = (tis & (ndi.distance_transform_edt(~bg) <= 16)) | (
        bg & (ndi.distance_transform_edt(~tis) <= 16)
    )
    np.testing.assert_array_equal((wide & BORDER_FLAG) > 0, near16)
    # The flags leave the labels themselves unchanged.
    np.testing.assert_array_equal(codes_yw(whole, kind)[0], y)
    np.testing.assert_array_equal(codes_yw(whole, kind)[1], w)


def test_weights_only_where_asked_and_never_on_excluded_labels():
    codes = np.array([[0, 1, 0 | BORDER_FLAG, 1 | BORDER_FLAG, EXCLUDED]], np.uint8)
    y, w = codes_yw(codes, "dense", 4)
    assert y.tolist() == [[0, 1, 0, 1, 0]] and w.tolist() == [[1, 1, 4, 4, 0]]
    # Validation (border 1) counts every labelled pixel once.
    assert codes_yw(codes, "dense")[1].tolist() == [[1, 1, 1, 1, 0]]
    scrib = np.array([[0, 1, 2, 1 | BORDER_FLAG, 2 | BORDER_FLAG, EXCLUDED]], np.uint8)
    y, w = codes_yw(scrib, "scribble", 3)
    assert y.tolist() == [[0, 0, 1, 0, 1, 0]] and w.tolist() == [[0, 1, 1, 3, 3, 0]]


@pytest.mark.parametrize("name", ["border_weight", "pen_weight"])
@pytest.mark.parametrize("bad", [0, 65, 2.5, True, "4"])
def test_border_and_pen_weights_are_checked_before_any_work(bad, name):
    cfg = TrainConfig(images=["a.tif"], masks=["a_mask.tif"], **{name: bad})
    with pytest.raises(TrainConfigError, match=name):
        _validate(cfg)


@pytest.mark.parametrize(
    "augment,white", [("none", True), ("ink", True), ("all", True), ("auto", False)]
)
def test_a_pen_weight_needs_the_pen_strokes(augment, white):
    """A pen weight weighs the strokes the augmentation draws: a run that draws
    none is refused before any work, saying what to change."""
    cfg = TrainConfig(
        images=["a.tif"], masks=["m.tif"], augment=augment, white_balance=white, pen_weight=8
    )
    with pytest.raises(TrainConfigError, match="draws none.*'auto'.*'pen'"):
        _validate(cfg)
    for ok in ("auto", "pen", "pen+flip"):
        _validate(TrainConfig(images=["a.tif"], masks=["m.tif"], augment=ok, pen_weight=8))


def test_cli_weights_reach_the_config():
    from napari_gigapixel.cli import build_parser
    from napari_gigapixel.cli.train import build_config

    base = ["train", "--image", "s.tif", "--mask", "m.tif", "--out", "m.keras"]
    d = build_config(build_parser().parse_args(base))
    assert (d.border_weight, d.pen_weight) == (TrainConfig.border_weight, TrainConfig.pen_weight)
    flags = ["--border-weight", "4", "--pen-weight", "8"]
    cfg = build_config(build_parser().parse_args(base + flags))
    assert (cfg.border_weight, cfg.pen_weight) == (4, 8)
