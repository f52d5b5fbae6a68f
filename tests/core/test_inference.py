"""Tiled inference: equal to whole-image inference, atomic OME-Zarr output, stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from napari_gigapixel.core.errors import GigapixelError
from napari_gigapixel.core.events import Finished, Message, Progress
from napari_gigapixel.core.inference import (
    PredictConfig,
    PredictionError,
    open_prediction,
    predict,
    predict_array,
    predict_whole,
)
from napari_gigapixel.core.prediction_store import is_prediction_path
from napari_gigapixel.core.unet import ModelFileError

ODD = (517, 1301)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(7).integers(0, 256, (*ODD, 3), dtype=np.uint8)


def _model(output_stride: int, seed: int = 3):
    from napari_gigapixel.core.unet import ModelConfig, build_unet, model_geometry

    model = build_unet(ModelConfig(output_stride=output_stride), seed=seed)
    return model, model_geometry(model)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from napari_gigapixel.core.unet import ModelConfig, save_model

    model, geometry = _model(4)
    path = tmp_path_factory.mktemp("model") / "unet.keras"
    save_model(model, path, geometry=geometry, model_config=ModelConfig(output_stride=4))
    return str(path), model, geometry


@pytest.mark.parametrize("output_stride", [4, 1])
def test_tiled_inference_equals_whole_image_inference(image, output_stride):
    model, geometry = _model(output_stride)
    ref = predict_whole(model, image, geometry)
    expected = (-(-ODD[0] // output_stride), -(-ODD[1] // output_stride))
    assert ref.shape == expected
    assert ref.std() > 1e-3  # random weights, but not a constant map
    # Chunks smaller than, around and larger than the halo-to-core ratio; the
    # last also leaves a remainder smaller than the halo to merge.
    for chunk in (96, 160, 480):
        tiled = predict_array(model, image, geometry, chunk=chunk)
        assert tiled.shape == expected
        assert np.abs(tiled - ref).max() <= 1e-5, chunk


def test_a_halo_too_small_breaks_the_equality(image):
    # The check above can fail: without the after-halo, borders differ.
    from napari_gigapixel.core.unet import Geometry

    model, geometry = _model(4)
    ref = predict_whole(model, image, geometry)
    short = Geometry(geometry.stride, 4, geometry.rf_before, 0)
    assert np.abs(predict_array(model, image, short, chunk=96) - ref).max() > 1e-3


def _run(cfg, stop=None):
    return list(predict(cfg, stop))


def test_predict_writes_an_ome_zarr_at_the_output_stride(tmp_path, image, saved_model):
    path, model, geometry = saved_model
    out = tmp_path / "pred.zarr"
    # Clean-up off: the mask is the thresholded probability, as before it existed.
    off = {"min_width_um": 0, "min_object_um2": 0, "min_hole_um2": 0}
    cfg = PredictConfig(model=path, image=image, out=str(out), chunk=160, threshold=0.45, **off)
    events = _run(cfg)
    assert not [e for e in events if isinstance(e, Progress) and e.stage == "clean"]
    done = [e for e in events if isinstance(e, Progress) and e.stage == "chunks"]
    assert done[-1].done == done[-1].total > 1
    assert [e.done for e in done] == sorted(e.done for e in done)
    fin = events[-1]
    assert isinstance(fin, Finished) and not fin.stopped and fin.result["out"] == str(out)

    store = open_prediction(out)
    assert store.downsample == 4.0 and store.region_shape == ODD
    assert store.metadata["slide_shape"] == list(ODD) and store.metadata["threshold"] == 0.45
    assert store.metadata["model"] == path and store.metadata["complete"] is True
    assert store.metadata["tta"] == "half-darker"  # the default: the mean over the mirror images
    ref = predict_whole(model, image, geometry, tta="half-darker")
    prob0 = store.probability[0].compute()
    assert prob0.dtype == np.uint8 and prob0.shape == ref.shape
    assert np.abs(prob0.astype(float) - ref * 255).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(store.mask[0].compute(), (ref >= 0.45).astype(np.uint8))
    # OME metadata: level 0 at scale 4, each level twice the previous.
    attrs = json.loads((out / ".zattrs").read_text())
    scales = [
        d["coordinateTransformations"][0]["scale"] for d in attrs["multiscales"][0]["datasets"]
    ]
    assert scales[0] == [4.0, 4.0]
    assert len(store.mask) == len(scales) and store.downsamples == [s[0] for s in scales]
    # Full-resolution views, lazily: each output pixel's block (nearest) ...
    near = store.mask_level0(chunk=256, refine=False)
    assert near.shape == ODD and near.chunksize == (256, 256)
    m = store.mask[0].compute()
    up = np.repeat(np.repeat(m, 4, 0), 4, 1)[: ODD[0], : ODD[1]]
    np.testing.assert_array_equal(near.compute(), up)
    # ... and the probability's threshold line (the default): the same pixels
    # wherever a block and its 8 neighbours agree, sub-block borders elsewhere.
    from scipy import ndimage as ndi

    full = store.mask_level0(chunk=256).compute()
    assert full.shape == ODD
    calm = ndi.minimum_filter(m, 3, mode="nearest") == ndi.maximum_filter(m, 3, mode="nearest")
    calm = np.repeat(np.repeat(calm, 4, 0), 4, 1)[: ODD[0], : ODD[1]]
    np.testing.assert_array_equal(full[calm], up[calm])
    assert (full != up).any()
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]


def test_existing_output_is_refused_without_overwrite(tmp_path, image, saved_model):
    path = saved_model[0]
    out = tmp_path / "pred.zarr"
    _run(PredictConfig(model=path, image=image, out=str(out), threshold=0.3))
    before = open_prediction(out).metadata["threshold"]
    with pytest.raises(PredictionError, match="already exists.*--overwrite"):
        _run(PredictConfig(model=path, image=image, out=str(out), threshold=0.6))
    assert open_prediction(out).metadata["threshold"] == before
    _run(PredictConfig(model=path, image=image, out=str(out), threshold=0.6, overwrite=True))
    assert open_prediction(out).metadata["threshold"] == 0.6
    assert sorted(os.listdir(tmp_path)) == ["pred.zarr"]


def test_a_stopped_prediction_leaves_no_store(tmp_path, image, saved_model):
    path = saved_model[0]
    out = tmp_path / "pred.zarr"
    stop = threading.Event()
    events = []
    for event in predict(PredictConfig(model=path, image=image, out=str(out), chunk=96), stop):
        events.append(event)
        if isinstance(event, Progress) and event.done >= 1:
            stop.set()
    assert isinstance(events[-1], Finished) and events[-1].stopped
    assert os.listdir(tmp_path) == []


def test_a_stop_keeps_the_previous_output(tmp_path, image, saved_model):
    path = saved_model[0]
    out = tmp_path / "pred.zarr"
    _run(PredictConfig(model=path, image=image, out=str(out)))
    stop = threading.Event()
    stop.set()
    events = _run(PredictConfig(model=path, image=image, out=str(out), overwrite=True), stop)
    assert events[-1].stopped
    assert open_prediction(out).metadata["complete"] is True
    assert os.listdir(tmp_path) == ["pred.zarr"]


def test_an_unfinished_store_is_refused(tmp_path):
    from napari_gigapixel.core.prediction_store import create_store

    create_store(tmp_path / "half.zarr", (10, 10), 8, {"kind": "prediction", "downsample": 4})
    assert is_prediction_path(tmp_path / "half.zarr")
    with pytest.raises(PredictionError, match="unfinished prediction"):
        open_prediction(tmp_path / "half.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(PredictionError, match="plain: not a napari-gigapixel prediction"):
        open_prediction(tmp_path / "plain")


def test_region_of_interest_and_probability_off(tmp_path, image, saved_model):
    path, model, geometry = saved_model
    out = tmp_path / "roi.zarr"
    roi = (64, 100, 300, 777)  # y0, x0, y1, x1
    _run(PredictConfig(model=path, image=image, out=str(out), roi=roi, write_probability=False))
    store = open_prediction(out)
    assert store.offset == (64, 100) and store.region_shape == (236, 677)
    assert len(store.probability) == 1
    # The default clean-up, the same as the in-memory API's on the same pixels.
    crop = image[64:300, 100:777]
    mask = predict_whole(model, crop, geometry, threshold=0.5)
    assert (mask != (predict_whole(model, crop, geometry) >= 0.5)).mean() > 0.01
    np.testing.assert_array_equal(store.mask[0].compute(), mask)
    with pytest.raises(GigapixelError, match="not inside the 517 x 1301"):
        _run(
            PredictConfig(
                model=path, image=image, out=str(tmp_path / "x.zarr"), roi=(0, 0, 600, 5)
            )
        )


def test_a_foreign_model_file_is_a_clear_error(tmp_path, image):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="bad.keras"):
        _run(PredictConfig(model=str(bad), image=image, out=str(tmp_path / "p.zarr")))
    assert not (tmp_path / "p.zarr").exists()


@pytest.mark.slow
def test_inference_through_the_runner_keeps_tensorflow_out(tmp_path, saved_model):
    path = saved_model[0]
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(1).integers(0, 256, (200, 333, 3), dtype=np.uint8))
    out = tmp_path / "p.zarr"
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from napari_gigapixel.core.inference import PredictConfig, open_prediction
        from napari_gigapixel.core.runner import run_job
        cfg = PredictConfig(model={path!r}, image=np.load({str(img)!r}), out={str(out)!r})
        events = list(run_job("napari_gigapixel.core.inference:predict", cfg).events())
        assert not events[-1].stopped and open_prediction({str(out)!r}).mask[0].shape == (50, 84)
        print("TF_IN_CALLER", "tensorflow" in sys.modules, "keras" in sys.modules)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TF_IN_CALLER False False" in res.stdout


def test_events_are_plain_and_picklable(tmp_path, image, saved_model):
    import pickle

    events = _run(
        PredictConfig(model=saved_model[0], image=image[:100, :100], out=str(tmp_path / "a.zarr"))
    )
    assert any(isinstance(e, Message) for e in events)
    for e in events:
        pickle.loads(pickle.dumps(e))


def test_mixed_precision_is_close_to_float32(tmp_path, image, saved_model):
    path, model, geometry = saved_model
    out = tmp_path / "bf16.zarr"
    _run(PredictConfig(model=path, image=image, out=str(out), chunk=160, mixed_precision=True))
    store = open_prediction(out)
    assert store.metadata["mixed_precision"] is True
    ref = predict_whole(model, image, geometry, tta=store.metadata["tta"]) * 255
    diff = np.abs(store.probability[0].compute().astype(float) - ref)
    assert diff.max() <= 2.0 and diff.max() > 0.5  # bf16 rounding, not float32 results


def test_mixed_precision_needs_the_model_config(tmp_path, image):
    from napari_gigapixel.core.unet import save_model

    model, geometry = _model(4)
    bare = tmp_path / "bare.keras"
    save_model(model, bare, geometry=geometry)  # no model_config recorded
    cfg = PredictConfig(model=str(bare), image=image, out=str(tmp_path / "o.zarr"))
    cfg.mixed_precision = True
    with pytest.raises(GigapixelError, match="bare.keras: the file records no model config"):
        _run(cfg)
    assert not (tmp_path / "o.zarr").exists()


def test_predict_cleans_level0_and_records_the_settings(tmp_path, image, saved_model):
    from napari_gigapixel.core.mask_clean import (
        DEFAULT_MIN_OBJECT_UM2,
        DEFAULT_MIN_WIDTH_UM,
        FALLBACK_MPP,
        clean_block,
    )

    path, model, geometry = saved_model
    out = tmp_path / "clean.zarr"
    cfg = PredictConfig(model=path, image=image, out=str(out), chunk=160, min_hole_um2=40.0)
    events = _run(cfg)
    clean = [e for e in events if isinstance(e, Progress) and e.stage == "clean"]
    assert clean[-1].done == clean[-1].total > 1  # chunk by chunk
    said = " ".join(e.text for e in events if isinstance(e, Message))
    assert f"assumes {FALLBACK_MPP:g} um/px" in said  # an array has no um/px
    res = events[-1].result
    grid = FALLBACK_MPP * 4
    assert res["clean"]["grid_um_per_px"] == grid and res["clean"]["applied"] is True
    assert res["clean"]["min_width_um"] == DEFAULT_MIN_WIDTH_UM
    assert res["clean"]["radius_px"] == pytest.approx(DEFAULT_MIN_WIDTH_UM / 2 / grid)
    assert res["clean"]["min_object_px"] == pytest.approx(DEFAULT_MIN_OBJECT_UM2 / grid**2)
    assert res["clean"]["min_hole_px"] == pytest.approx(40.0 / grid**2)
    store = open_prediction(out)
    assert store.metadata["clean"] == res["clean"]
    ref = predict_whole(model, image, geometry, tta=res["tta"])
    c = res["clean"]
    expected = clean_block(
        (ref >= 0.5).astype(np.uint8), c["radius_px"], c["min_object_px"], c["min_hole_px"]
    )
    got = store.mask[0].compute()
    np.testing.assert_array_equal(got, expected)
    assert res["tissue_fraction"] == pytest.approx(got.mean())
    # The probability is untouched (a user can re-threshold it).
    assert np.abs(store.probability[0].compute().astype(float) - ref * 255).max() <= 0.5 + 1e-3
    # The in-memory API gives the same mask.
    tiled = predict_array(
        model, image, geometry, chunk=160, threshold=0.5, clean=cfg.clean_settings()
    )
    np.testing.assert_array_equal(tiled, expected)


@pytest.mark.parametrize("field", ["min_width_um", "min_object_um2", "min_hole_um2"])
@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_bad_clean_settings_fail_before_any_work(tmp_path, image, saved_model, field, bad):
    from napari_gigapixel.core.mask_clean import MaskCleanError

    out = tmp_path / "x.zarr"
    cfg = PredictConfig(model=saved_model[0], image=image, out=str(out), **{field: bad})
    with pytest.raises(MaskCleanError, match=field):
        next(predict(cfg))
    assert not os.listdir(tmp_path)


def test_a_stop_during_the_clean_up_leaves_no_store(tmp_path, image, saved_model):
    out = tmp_path / "pred.zarr"
    stop = threading.Event()
    events = []
    for ev in predict(
        PredictConfig(model=saved_model[0], image=image, out=str(out), chunk=160), stop
    ):
        events.append(ev)
        if isinstance(ev, Progress) and ev.stage == "clean" and ev.done == 1:
            stop.set()  # between two chunks of the clean-up pass
    clean = [e for e in events if isinstance(e, Progress) and e.stage == "clean"]
    assert clean[-1].done < clean[-1].total
    assert events[-1].stopped and not out.exists() and not os.listdir(tmp_path)


def test_clean_without_a_threshold_is_refused(image):
    from napari_gigapixel.core.mask_clean import CleanSettings

    model, geometry = _model(4)
    with pytest.raises(GigapixelError, match="needs a threshold"):
        predict_whole(model, image[:64, :64], geometry, clean=CleanSettings())
    with pytest.raises(GigapixelError, match="needs a threshold"):
        predict_array(model, image[:64, :64], geometry, clean=CleanSettings())
