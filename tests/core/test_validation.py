"""Validation while training: exact exclusion of a validation ROI, tiled scoring,
the best checkpoint and its bookkeeping across a resume."""

from __future__ import annotations

import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from napari_gigapixel.core import _backend  # noqa: E402
from napari_gigapixel.core._train_augment import SlideView  # noqa: E402
from napari_gigapixel.core._train_data import build_image_data, snap_rect  # noqa: E402
from napari_gigapixel.core.errors import GigapixelError  # noqa: E402
from napari_gigapixel.core.events import Finished, StepEvent, ValidationEvent  # noqa: E402
from napari_gigapixel.core.image_step import image_step  # noqa: E402
from napari_gigapixel.core.masks import AnnotationMask  # noqa: E402
from napari_gigapixel.core.model_io import read_model_meta  # noqa: E402
from napari_gigapixel.core.tiling import tile_grid  # noqa: E402
from napari_gigapixel.core.training import TrainConfig, train  # noqa: E402
from napari_gigapixel.core.unet import ModelConfig, build_unet, model_geometry  # noqa: E402
from napari_gigapixel.core.validation import best_path, iter_validate  # noqa: E402

SMALL = ModelConfig(widths=(4, 6, 8), decoder_widths=(3, 4, 4))
SHAPE = (133, 201)  # odd: partial output pixels and tiles at the edges
RECT = (40, 60, 92, 140)  # validation ROI, on the output grid (multiples of 4)


def _pair(shape, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    tissue = (np.sin(yy / 17.0) * np.cos(xx / 23.0)) > 0.1
    img = np.where(tissue[..., None], [180, 90, 160], [235, 230, 235]).astype(np.float64)
    img = np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8)
    return img, tissue.astype(np.uint8)


@pytest.fixture(scope="module")
def pair():
    return _pair(SHAPE, 0)


@pytest.fixture(scope="module")
def model64():
    m = build_unet(SMALL, seed=3, dtype="float64")
    rng = np.random.default_rng(4)
    m.set_weights(
        [w + rng.normal(0, 0.1, w.shape) if w.ndim == 1 else w * 1.5 for w in m.get_weights()]
    )
    return m


def _grads(model, data, loss, core=64):
    geo = model_geometry(model)
    res = image_step(
        _backend.TileStep(model, 1),
        SlideView(data, geo.output_stride, (0, False, 1.0, 0.0)),
        tile_grid(data.shape, core, geo.halo, geo.stride),
        geo,
        loss,
        data.n_labelled,
        1,
    )
    return res.grads, res.loss


def _scribbles_without_roi(data):
    ho, wo = data.labels.shape
    y, _ = data.labels_yw(0, ho, 0, wo)
    scrib = np.where(y > 0, 2, 1).astype(np.uint8)
    scrib[RECT[0] // 4 : RECT[2] // 4, RECT[1] // 4 : RECT[3] // 4] = 0
    return scrib


def _rel(a, b):
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b)) / max(
        float(np.abs(y).max()) for y in b
    )


@pytest.mark.parametrize("loss", ["bce", "dice+bce"])
def test_val_roi_is_left_out_of_the_training_loss_exactly(pair, model64, loss):
    img, mask = pair
    build = dict(roi=None, output_stride=4, cache_in_memory=lambda n: True)
    full = build_image_data(img, AnnotationMask(mask, 1.0, "dense"), kind="dense", **build)
    excluded = build_image_data(img, AnnotationMask(mask, 1.0, "dense"), kind="dense", **build)
    left = excluded.exclude(RECT, 4)
    assert left == (92 - 40) // 4 * (140 - 60) // 4
    assert excluded.n_labelled == full.n_labelled - left
    # The reference: the same labels as scribbles at output stride (2 tissue,
    # 1 background; dense masks read background past the slide's edge),
    # unlabelled (0) over the ROI.
    scrib = _scribbles_without_roi(full)
    ref = build_image_data(img, AnnotationMask(scrib, 4.0, "scribble"), kind="scribble", **build)
    g_ex, l_ex = _grads(model64, excluded, loss)
    g_ref, l_ref = _grads(model64, ref, loss)
    g_full, _ = _grads(model64, full, loss)
    assert _rel(g_ex, g_ref) < 1e-10 and l_ex == pytest.approx(l_ref, rel=1e-10)
    assert _rel(g_full, g_ref) > 1e-4  # the ROI's labels did contribute before


def test_snap_rect_grows_to_the_output_grid():
    assert snap_rect((41, 61, 90, 139), (0, 0), 4, (133, 201)) == (40, 60, 92, 140)
    # Relative to a training ROI starting at (2, 3); clipped to the slide.
    assert snap_rect((41, 61, 131, 200), (2, 3), 4, (133, 201)) == (38, 59, 133, 201)
    assert snap_rect((0, 1, 10, 10), (2, 3), 4, (133, 201)) == (2, 3, 10, 11)


def test_validation_score_is_the_whole_image_score(pair, model64):
    img, mask = pair
    data = build_image_data(
        img,
        AnnotationMask(mask, 1.0, "dense"),
        roi=None,
        kind="dense",
        output_stride=4,
        cache_in_memory=lambda n: True,
    )
    geo = model_geometry(model64)
    step = _backend.TileStep(model64, 1)
    scores = []
    for core in (64, 4096):
        gen = iter_validate(
            step, [data], [tile_grid(data.shape, core, geo.halo, geo.stride)], geo, "dice+bce", 1
        )
        try:
            while True:
                next(gen)
        except StopIteration as done:
            scores.append(done.value)
    # Reference: one forward pass over the padded whole image.
    hp, wp = -(-SHAPE[0] // geo.stride) * geo.stride, -(-SHAPE[1] // geo.stride) * geo.stride
    x = np.zeros((1, hp, wp, 3), np.uint8)
    x[0, : SHAPE[0], : SHAPE[1]] = img
    ho, wo = -(-SHAPE[0] // 4), -(-SHAPE[1] // 4)
    p = model64(x, training=False).numpy()[0, :ho, :wo, 0]
    y, _ = data.labels_yw(0, ho, 0, wo)
    hard = p > 0.5
    dice = 2 * np.sum(hard & (y > 0)) / (np.sum(hard) + np.sum(y))
    for s in scores:
        assert s.dice == pytest.approx(dice, abs=1e-12)
        assert s.soft_dice == pytest.approx(scores[0].soft_dice, rel=1e-10)
        assert s.loss == pytest.approx(scores[0].loss, rel=1e-10)


def _cfg(tmp_path, pair, **kw):
    img, mask = pair
    base = dict(
        images=[img],
        masks=[mask],
        out=str(tmp_path / "model.keras"),
        steps=2,
        lr=1e-2,
        loss="dice+bce",  # the dynamics these tests were built on (not the recipe's)
        model=SMALL,
        seed=7,
        tile=64,
        mixed_precision=False,
        dtype="float64",
        checkpoint_every=100,
    )
    base.update(kw)
    return TrainConfig(**base)


def _weights(path):
    from napari_gigapixel.core.unet import load_model

    return load_model(path)[0].get_weights()


def test_training_with_a_val_roi_equals_training_without_its_labels(tmp_path, pair):
    img, mask = pair
    events = list(train(_cfg(tmp_path, pair, val_roi=RECT, val_every=1)))
    full = build_image_data(
        img,
        AnnotationMask(mask, 1.0, "dense"),
        roi=None,
        kind="dense",
        output_stride=4,
        cache_in_memory=lambda n: True,
    )
    scrib = _scribbles_without_roi(full)
    ref_out = str(tmp_path / "ref.keras")
    list(train(_cfg(tmp_path, pair, masks=[scrib], mask_kind="scribble", out=ref_out)))
    for a, b in zip(_weights(tmp_path / "model.keras"), _weights(ref_out)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    vals = [e for e in events if isinstance(e, ValidationEvent)]
    assert [v.step for v in vals] == [1, 2]
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert all("val_dice" in s.extra and "val_loss" in s.extra for s in steps)


def _inverted_run(tmp_path, pair, steps, **kw):
    """Validation on the inverted mask: as the model learns, validation Dice falls."""
    img, mask = pair
    return list(
        train(
            _cfg(
                tmp_path,
                pair,
                steps=steps,
                val_images=[img],
                val_masks=[1 - mask],
                val_every=1,
                lr=3e-2,
                **kw,
            )
        )
    )


def test_best_checkpoint_keeps_the_early_peak_and_resume_continues_it(tmp_path, pair):
    out = tmp_path / "model.keras"
    events = _inverted_run(tmp_path, pair, 5)
    fin = events[-1]
    assert isinstance(fin, Finished) and not fin.stopped
    meta = read_model_meta(out)
    val = [h["val_dice"] for h in meta["history"]]
    assert len(val) == 5 and all("val_loss" in h for h in meta["history"])
    best = int(np.argmax(val)) + 1
    assert best < 5 and val[-1] < max(val)  # peaks early
    r = fin.result
    assert r["best_step"] == best and r["best_val_dice"] == pytest.approx(max(val))
    assert r["best_model"] == os.path.abspath(best_path(out))
    best_meta = read_model_meta(best_path(out))
    assert best_meta["history"][-1]["step"] == best
    assert best_meta["validation"]["best_step"] == best
    assert best_meta["validation"]["best_val_dice"] == pytest.approx(max(val))
    assert meta["validation"]["best_step"] == best
    best_weights = _weights(best_path(out))
    assert any(np.abs(a - b).max() > 1e-6 for a, b in zip(best_weights, _weights(out)))
    # Resume into a new file: the earlier best stays the best (a fresh
    # bookkeeping would take the resumed run's first validation) and its file
    # is carried beside the new one.
    out2 = tmp_path / "more.keras"
    events2 = _inverted_run(tmp_path, pair, 3, resume=str(out), out=str(out2))
    r2 = events2[-1].result
    meta2 = read_model_meta(out2)
    val2 = [h["val_dice"] for h in meta2["history"]]
    assert len(val2) == 8 and val2[:5] == val
    assert max(val2[5:]) < max(val)
    assert r2["best_step"] == best and r2["best_val_dice"] == pytest.approx(max(val))
    assert r2["best_model"] == os.path.abspath(best_path(out2))
    for a, b in zip(_weights(best_path(out2)), best_weights):
        np.testing.assert_array_equal(a, b)
    assert meta2["validation"]["best_step"] == best


def test_bad_validation_config_is_refused(tmp_path, pair):
    img, mask = pair
    with pytest.raises(GigapixelError, match="one mask per validation image"):
        list(train(_cfg(tmp_path, pair, val_images=[img], val_masks=[])))
    with pytest.raises(GigapixelError, match="val_every"):
        list(train(_cfg(tmp_path, pair, val_roi=RECT, val_every=0)))
    with pytest.raises(GigapixelError, match="val_roi"):
        list(train(_cfg(tmp_path, pair, val_roi=(1, 2, 3))))
    with pytest.raises(GigapixelError, match="not inside"):
        list(train(_cfg(tmp_path, pair, val_roi=(0, 0, 500, 50))))
    with pytest.raises(GigapixelError, match="covers all the labelled"):
        list(train(_cfg(tmp_path, pair, val_roi=(0, 0) + SHAPE)))
    assert not (tmp_path / "model.keras").exists()
