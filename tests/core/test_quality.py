"""Quality of the default recipe on small real-texture slides: worst case over initial seeds.

A small version of ``benchmarks/bench_quality.py``: per family, train with the
default recipe (fewer steps) on one 1024 x 2048 slide, predict another slide of
the same family, for 3 initial seeds. Thresholds are the measured worst case
minus a margin (measured figures in the comments, 2 shared CPU cores).
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_gigapixel.core.texture_slides import family_region

SHAPE = (1024, 2048)
STEPS = 60
# family: threshold on the worst held-out Dice over seeds 0, 1, 2; measured worst
# with the recipe (medium model, dice + 3 x focal, the ink recolouring and pen
# strokes (augment "auto"), predict's default mask clean-up; seed-wise:
# synthetic-he 0.9907 0.9804 0.9859; ihc 0.9636 0.9745 0.9760; ihc-as-he 0.9820
# 0.9778 0.9819; with the ink alone 0.9907 0.9870 0.9818, 0.9603 0.9771 0.9674,
# 0.9824 0.9809 0.9809; with neither 0.9917 0.9901 0.9896, 0.9741 0.9780 0.9705,
# 0.9805 0.9886 0.9857) less a margin of about 0.02 (ihc: 0.015). The three
# families took 59 s together on the 2 cores.
THRESHOLDS = {"synthetic-he": 0.965, "ihc": 0.945, "ihc-as-he": 0.96}


def _dice(pred: np.ndarray, truth: np.ndarray, downsample: int) -> float:
    from napari_gigapixel.core.masks import AnnotationMask
    from napari_gigapixel.core.metrics import confusion, dice

    pm = AnnotationMask(pred, downsample=float(downsample), name="prediction")
    return dice(confusion(pm, truth, shape=truth.shape))


@pytest.mark.slow
@pytest.mark.parametrize("family", list(THRESHOLDS))
def test_default_recipe_worst_case_over_seeds(family, tmp_path):
    pytest.importorskip("tensorflow")
    from napari_gigapixel.core.inference import PredictConfig, predict
    from napari_gigapixel.core.prediction_store import open_prediction
    from napari_gigapixel.core.training import TrainConfig, train

    # Slide seeds 20 (train) and 21 (held out): neither is a benchmark slide.
    rgb, mask, _ = family_region(family, SHAPE, 20, 0, SHAPE[0], 0, SHAPE[1])
    held_rgb, held_mask, _ = family_region(family, SHAPE, 21, 0, SHAPE[0], 0, SHAPE[1])
    scores = []
    for seed in (0, 1, 2):
        out = tmp_path / f"m{seed}.keras"
        cfg = TrainConfig(
            images=[rgb], masks=[mask], out=str(out), steps=STEPS, seed=seed, checkpoint_every=0
        )
        for _ in train(cfg):
            pass
        pred = tmp_path / f"p{seed}.zarr"
        for _ in predict(PredictConfig(model=str(out), image=held_rgb, out=str(pred))):
            pass
        store = open_prediction(str(pred))
        scores.append(_dice(np.asarray(store.mask[0]), held_mask, int(store.downsample)))
    print(family, scores)  # the measured figures (pytest -rP shows them)
    assert min(scores) >= THRESHOLDS[family], scores
