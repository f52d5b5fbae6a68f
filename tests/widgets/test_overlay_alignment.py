"""In napari, a prediction's pyramid levels sit on the slide's at every level.

napari draws level ``k`` of a multiscale layer with its pixel ``j`` centred at
level-0 data coordinate ``j * downsample`` (one transform for all levels), so a
level that averages blocks, as every scanner's and the prediction's levels do, is
drawn ``(D - 1) / 2`` level-0 pixels up-left of the blocks it stands for. The
prediction's levels are whole-block levels like the slide's, so both move
together: the test measures, level by level, the centroid of the tissue as napari
places it in the slide layer, in the prediction mask layer and in the probability
layer. Before the fix, the mask's ``[::2, ::2]`` levels sat ``(D - 1) / 2`` pixels
off the slide's (15.5 level-0 pixels at 1/32).
"""

from __future__ import annotations

import numpy as np

from napari_gigapixel._widgets.predict import PredictWidget

# Slide level 0 (multiples of 128: napari derives each level's scale from the shape
# ratio, so a rounded-up level of a ragged slide is drawn slightly shrunk) and the
# prediction's downsample.
H, W, D0 = 640, 1664, 4


def _slide_levels(truth: np.ndarray, n: int) -> list[np.ndarray]:
    """An RGB pyramid like a scanner's: grey tissue on white glass, 2 x 2 means."""
    grey = np.where(truth, 80.0, 240.0)
    levels = [grey]
    for _ in range(n):
        a = levels[-1]
        a = np.pad(a, ((0, a.shape[0] % 2), (0, a.shape[1] % 2)), mode="edge")
        levels.append(a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3)))
    return [np.repeat(np.round(g).astype(np.uint8)[..., None], 3, axis=2) for g in levels]


def _centroid(layer, level: int, weight: np.ndarray) -> np.ndarray:
    """World (y, x) of the weighted centroid of ``level`` as napari draws it."""
    ds = np.asarray(layer.downsample_factors[level][-2:], float)
    ii, jj = np.nonzero(weight)
    w = weight[ii, jj].astype(float)
    data = np.array([(ii * w).sum(), (jj * w).sum()]) / w.sum() * ds
    return np.asarray(layer.data_to_world(data), float)[-2:]


def test_prediction_levels_sit_on_the_slide_levels(make_napari_viewer, prediction_writer):
    yy, xx = np.mgrid[:H, :W]
    truth = ((yy + 0.5 - 321.3) / 180.0) ** 2 + ((xx + 0.5 - 837.7) / 450.0) ** 2 < 1
    store = prediction_writer(truth, D0, "disc")
    viewer = make_napari_viewer()
    slide = viewer.add_image(
        _slide_levels(truth, 5), multiscale=True, rgb=True, scale=(0.5, 0.5), name="slide"
    )
    w = PredictWidget(viewer)
    w.probability.value = True
    mask_layer, prob_layer = w.show_prediction(store, slide)
    s = 0.5  # world units per level-0 pixel
    true_c = np.asarray(slide.data_to_world(np.argwhere(truth).mean(axis=0)), float)[-2:]
    report = {}
    for k in range(len(mask_layer.data)):
        big = D0 * 2**k  # level-0 pixels per pixel of this level
        a = k + 2  # the slide level napari shows beside it (same pixel size)
        assert np.allclose(slide.downsample_factors[a][-2:], big)
        grey = np.asarray(slide.data[a])[..., 0].astype(float)
        slide_c = _centroid(slide, a, (240.0 - grey) / 160.0)
        mask_c = _centroid(mask_layer, k, np.asarray(mask_layer.data[k]) > 0)
        prob_c = _centroid(prob_layer, k, np.asarray(prob_layer.data[k]) / 255.0)
        off_mask, off_prob = (mask_c - slide_c) / s, (prob_c - slide_c) / s
        off_slide = (slide_c - true_c) / s
        report[big] = [np.round(v, 2).tolist() for v in (off_mask, off_prob, off_slide)]
        # On the slide as shown, at every level: the probability within the 1/4 level's
        # own centring ((4 - 1) / 2 = 1.5 level-0 px); the mask's outline is whole
        # pixels of the level, so its centroid also moves by a fraction of one. A
        # half pixel of the level would be big / 2; [::2, ::2] levels were off by
        # (big - 1) / 2.
        assert np.abs(off_prob).max() <= D0 / 2, report
        assert np.abs(off_mask).max() <= max(D0 / 2, big / 4), report
        # napari's own placement of block levels: within half a pixel of the level.
        assert np.abs(off_slide).max() <= big / 2, report
    print(report)  # level-0 px: (mask - slide, probability - slide, slide - truth) per level


def test_review_counts_a_stored_prediction_as_evaluate_does(
    slide_viewer, tiny_slide, prediction_writer, monkeypatch
):
    import tifffile

    from napari_gigapixel._widgets import _layers
    from napari_gigapixel._widgets.annotate import AnnotateWidget
    from napari_gigapixel._widgets.review import ReviewWidget
    from napari_gigapixel.core.metrics import evaluate

    viewer, slide = slide_viewer
    truth = tifffile.imread(tiny_slide[1]) > 0
    store = prediction_writer(np.roll(truth, 22, axis=1), D0, "shifted")  # 22 px off
    pred_layer = PredictWidget(viewer).show_prediction(store, slide)[0]
    AnnotateWidget(viewer).load_file(tiny_slide[1])
    # A budget that keeps the Review map off the prediction's finest level (1/4).
    monkeypatch.setattr(_layers, "MAX_MASK_PIXELS", 64 * 128)
    w = ReviewWidget(viewer)
    w.prediction.value, w.mask.value, w.slide.value = (
        pred_layer,
        viewer.layers["tissue mask"],
        slide,
    )
    got = w.compare()
    ref = evaluate(store, tiny_slide[1])
    for key in ("dice", "iou", "precision", "recall"):
        assert got[key] == ref[key], key
    assert 0.5 < got["dice"] < 0.99
