"""Training and inference at a working resolution stay exact; models remember it.

At a pyramid level > 0 and at an area-averaged resolution (3 x 3 of level 1),
the streamed gradient equals the whole-image gradient of that resolution's
image, and tiled inference equals one whole-image run over it; labels are
the mask read at each output pixel's level-0 block centre.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from test_resolution import _slide  # noqa: E402
from test_training_equivalence import (  # noqa: E402
    _model,
    rel_err,
    streamed_gradient,
    whole_image_gradient,
)

from napari_gigapixel.core.events import Finished, Message  # noqa: E402
from napari_gigapixel.core.masks import AnnotationMask  # noqa: E402
from napari_gigapixel.core.resolution import Resolution, resolution_array, resolve  # noqa: E402

SHAPE = (517, 1301)


def _mask(kind: str) -> AnnotationMask:
    rng = np.random.default_rng(2)
    shape = (-(-SHAPE[0] // 4), -(-SHAPE[1] // 4))
    arr = (
        (rng.random(shape) < 0.4).astype(np.uint8)
        if kind == "dense"
        else rng.integers(0, 3, shape).astype(np.uint8)
    )
    return AnnotationMask(arr, downsample=4.0, kind=kind, name=kind)


def _res_data(slide, kind, resolution, roi=None):
    from napari_gigapixel.core._train_data import build_image_data

    return build_image_data(
        slide,
        _mask(kind),
        roi=roi,
        kind=kind,
        output_stride=4,
        cache_in_memory=lambda n: True,
        resolution=resolution,
    )


@pytest.mark.parametrize(
    "resolution,downsample",
    [(Resolution(level=1), 2.0), (Resolution(mpp=1.5), 6.0)],
    ids=["level1", "area3x3"],
)
@pytest.mark.parametrize("loss,kind", [("dice+bce", "dense"), ("bce", "scribble")])
def test_streamed_equals_whole_at_a_resolution(resolution, downsample, loss, kind):
    slide = _slide(SHAPE)
    data = _res_data(slide, kind, resolution)
    r = resolve(slide, resolution)
    assert data.downsample == downsample and data.shape == r.shape
    # The cache holds the resolution's pixels; labels are the mask at block centres.
    h, w = data.shape
    assert np.array_equal(data.image.read(0, h, 0, w), resolution_array(slide, r).compute())
    ho, wo = -(-h // 4), -(-w // 4)
    want = _mask(kind).read_grid(0, 0, ho, wo, 4 * downsample)
    assert np.array_equal(data.labels.read(0, ho, 0, wo), want)
    model = _model(4)
    ref, ref_loss = whole_image_gradient(model, data, loss, 4)
    assert max(float(np.abs(g).max()) for g in ref) > 1e-6
    for core in (64, 96):
        grads, value, n = streamed_gradient(model, data, loss, core)
        assert n > 1
        assert rel_err(grads, ref) < 1e-10, (resolution, loss, core)
        assert value == pytest.approx(ref_loss, rel=1e-10)


def test_a_level0_roi_is_mapped_to_the_resolution():
    slide = _slide(SHAPE)
    data = _res_data(slide, "dense", Resolution(mpp=1.5), roi=(7, 13, 300, 900))
    # Rounded outwards to whole pixels of downsample 6: rows 1..50, columns 2..150.
    assert data.shape == (49, 148) and data.offset == (6.0, 12.0)
    full = resolution_array(slide, resolve(slide, Resolution(mpp=1.5))).compute()
    assert np.array_equal(data.image.read(0, 49, 0, 148), full[1:50, 2:150])


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from napari_gigapixel.core.unet import ModelConfig, build_unet, model_geometry, save_model

    m = build_unet(ModelConfig(), seed=3)
    path = tmp_path_factory.mktemp("m") / "m.keras"
    save_model(m, path, geometry=model_geometry(m), resolution={"mpp": 1.5, "downsample": 6.0})
    return str(path), m, model_geometry(m)


def _run(gen):
    events = list(gen)
    assert isinstance(events[-1], Finished)
    return events


def test_tiled_prediction_at_the_model_resolution_equals_whole(tmp_path, model_file):
    from napari_gigapixel.core.inference import PredictConfig, open_prediction, predict
    from napari_gigapixel.core.tiled_model import predict_whole

    path, model, geometry = model_file
    slide = _slide(SHAPE)
    out = tmp_path / "p.zarr"
    # No resolution asked for: the model's 1.5 um/px (3 x 3 area mean of level 1).
    events = _run(predict(PredictConfig(model=path, image=slide, out=str(out), chunk=96)))
    said = " ".join(e.text for e in events if isinstance(e, Message))
    assert "model's resolution, 1.5 um/px" in said
    res = events[-1].result
    assert res["resolution"]["downsample"] == 6.0 and res["resolution"]["factor"] == 3
    assert res["downsample"] == 24.0  # 6 x the output stride 4
    store = open_prediction(out)
    assert store.downsample == 24.0 and store.region_shape == SHAPE
    img = resolution_array(slide, resolve(slide, Resolution(mpp=1.5))).compute()
    ref = predict_whole(model, img, geometry, tta=res["tta"])
    got = store.probability[0].compute().astype(np.float64) / 255.0
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.5 / 255 + 1e-6  # uint8 rounding only
    # --level overrides the model's resolution; the ROI stays in level-0 pixels.
    out2 = tmp_path / "p2.zarr"
    level1 = Resolution(level=1)
    roi = (8, 4, 200, 600)
    cfg = PredictConfig(model=path, image=slide, out=str(out2), resolution=level1, roi=roi)
    res = _run(predict(cfg))[-1].result
    store = open_prediction(out2)
    assert store.downsample == 8.0 and store.offset == (8, 4)
    assert res["shape"] == [96, 298] and store.region_shape == (192, 596)


def test_training_records_its_resolution_and_evaluate_compares_there(tmp_path):
    from napari_gigapixel.core.inference import PredictConfig, predict
    from napari_gigapixel.core.metrics import evaluate
    from napari_gigapixel.core.model_io import read_model_meta
    from napari_gigapixel.core.training import TrainConfig, train
    from napari_gigapixel.core.unet import ModelConfig

    slide = _slide(SHAPE)
    mask = _mask("dense")
    cfg = TrainConfig(
        images=[slide],
        masks=[mask],
        out=str(tmp_path / "m.keras"),
        steps=1,
        model=ModelConfig(widths=(4, 6, 8), decoder_widths=(3, 4, 4)),
        resolution=Resolution(mpp=2.0),
        mixed_precision=False,
    )
    events = _run(train(cfg))
    meta = read_model_meta(cfg.out)
    rec = meta["resolution"]
    assert rec["mpp"] == 2.0 and rec["downsample"] == 8.0 and rec["level"] == 2
    assert meta["train_config"]["resolution"] == {"mpp": 2.0, "level": None}
    assert events[-1].result["resolution"]["downsample"] == 8.0
    # Resumed without a resolution: the checkpoint's, and it says so.
    cfg.resume, cfg.resolution = cfg.out, None
    events = _run(train(cfg))
    said = " ".join(e.text for e in events if isinstance(e, Message))
    assert "checkpoint's resolution, 2 um/px" in said
    assert read_model_meta(cfg.out)["resolution"]["downsample"] == 8.0
    out = tmp_path / "p.zarr"
    res = _run(predict(PredictConfig(model=cfg.out, image=slide, out=str(out))))[-1].result
    assert res["resolution"]["mpp"] == 2.0 and res["downsample"] == 32.0
    # At level 2 every compared pixel is one of that level: counts in its pixels.
    figs = evaluate(str(out), mask, slide=slide, resolution=Resolution(level=2))
    h2, w2 = slide.levels[2].shape[:2]
    assert figs["pixels"] == h2 * w2 and figs["resolution"]["downsample"] == 4.0
    json.dumps(figs)
    # Same counts, by hand: both masks at the centre of each level-2 pixel
    # (the prediction along its probability's threshold line).
    from napari_gigapixel.core.inference import open_prediction
    from napari_gigapixel.core.mask_refine import refined_mask

    store = open_prediction(out)
    p = refined_mask(store).read_grid(0, 0, h2, w2, 4.0) > 0
    t = mask.read_grid(0, 0, h2, w2, 4.0) > 0
    assert figs["tp"] == int((p & t).sum()) and figs["fn"] == int((~p & t).sum())
