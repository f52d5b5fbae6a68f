"""predict_array/predict_whole white-balance as predict does, for a white-balanced model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from napari_gigapixel.core.events import Finished  # noqa: E402
from napari_gigapixel.core.inference import (  # noqa: E402
    PredictConfig,
    open_prediction,
    predict,
    predict_array,
    predict_whole,
)
from napari_gigapixel.core.input_norm import apply_balance, balance_table, white_point  # noqa: E402
from napari_gigapixel.core.tiled_model import (  # noqa: E402
    DEFAULT_TTA,
    model_white_balance,
    model_white_field,
)
from napari_gigapixel.core.white_field import white_field  # noqa: E402

SHAPE = (301, 517)  # odd: padded edges and a merged last chunk
SMALL = dict(widths=(4, 6, 8), decoder_widths=(3, 4, 4))
#: The store keeps rint(p * 255): agreement within half a grey level (the slide is lossless).
TOL = 0.5 / 255 + 1e-5


def _image(seed: int = 0) -> np.ndarray:
    """Tissue on a bluish, dim glass (far from the balanced white, 240)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    tissue = (np.sin(yy / 23.0) * np.cos(xx / 31.0)) > 0.2
    img = np.where(tissue[..., None], [150, 95, 160], [180, 195, 215]).astype(np.float64)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", params=[False, True], ids=["per-slide", "per-place"])
def balanced_model(request, tmp_path_factory):
    """A white-balanced model: per slide (files from before ``white_field``) or per place."""
    from napari_gigapixel.core.unet import ModelConfig, build_unet, model_geometry, save_model

    mcfg = ModelConfig(**SMALL, white_balance=True, white_field=request.param)
    model = build_unet(mcfg, seed=5)
    path = tmp_path_factory.mktemp("wb") / "wb.keras"
    save_model(model, path, geometry=model_geometry(model), model_config=mcfg)
    return str(path)


def test_predict_array_equals_predict_on_the_same_pixels_as_a_slide(balanced_model, tmp_path):
    import tifffile

    from napari_gigapixel.core.unet import load_model

    img = _image()
    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, img, tile=(128, 128))  # uncompressed: the same pixels back
    events = list(
        predict(
            PredictConfig(
                model=balanced_model, image=str(slide), out=str(tmp_path / "p.zarr"), chunk=128
            )
        )
    )
    assert isinstance(events[-1], Finished) and not events[-1].stopped
    store = open_prediction(str(tmp_path / "p.zarr"))
    stored = np.asarray(store.probability[0], dtype=np.float64) / 255.0  # rint(p * 255)
    assert store.metadata["white_point"] == list(white_point(img))

    model, meta = load_model(balanced_model)
    local = meta["model_config"].white_field
    assert store.metadata["white_field"] is local
    geometry = meta["geometry"]
    assert model_white_balance(model) is True and model_white_balance(balanced_model) is True
    assert model_white_field(model) is local and model_white_field(balanced_model) is local
    for source in (model, balanced_model):  # a loaded model, a path
        got = predict_array(source, img, geometry, chunk=96, tta=DEFAULT_TTA)  # predict's default
        assert got.shape == stored.shape
        assert np.abs(got - stored).max() <= TOL
    whole = predict_whole(model, img, geometry, tta=DEFAULT_TTA)
    np.testing.assert_allclose(whole, got, atol=1e-5)
    # The balance is what makes them agree: unbalanced pixels give another map,
    # and balancing by hand then switching it off gives the same one.
    raw = predict_array(model, img, geometry, chunk=96, white_balance=False, tta=DEFAULT_TTA)
    assert np.abs(raw - stored).max() > 4 * TOL  # would fail the agreement above
    if local:  # per place: each pixel by its own cell's glass (chunks of 128 and 96 agree)
        by_hand = white_field(img).apply(img, 0, 0)
    else:
        by_hand = apply_balance(img, balance_table(white_point(img)))
    again = predict_whole(model, by_hand, geometry, white_balance=False, tta=DEFAULT_TTA)
    np.testing.assert_allclose(again, whole, atol=1e-6)


def test_a_model_without_white_balance_takes_pixels_as_given(tmp_path):
    from napari_gigapixel.core.unet import (
        ModelConfig,
        build_unet,
        load_model,
        model_geometry,
        save_model,
    )

    mcfg = ModelConfig(**SMALL)
    model = build_unet(mcfg, seed=5)
    geometry = model_geometry(model)
    assert model_white_balance(model) is None  # built here, never saved: says nothing
    img = _image(1)
    plain = predict_whole(model, img, geometry)
    save_model(model, tmp_path / "plain.keras", geometry=geometry, model_config=mcfg)
    loaded, _ = load_model(tmp_path / "plain.keras")
    assert model_white_balance(loaded) is False and model_white_balance(model) is False
    np.testing.assert_allclose(predict_array(loaded, img, geometry, chunk=96), plain, atol=1e-5)
    forced = predict_whole(model, img, geometry, white_balance=True)
    assert np.abs(forced - plain).max() > 4 * TOL
