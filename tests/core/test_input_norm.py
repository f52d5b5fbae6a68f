"""Per-slide white balance, input standardisation, warmup and head prior of the trainer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gigapixel.core.errors import GigapixelError
from napari_gigapixel.core.input_norm import WHITE, apply_balance, balance_table, white_point
from napari_gigapixel.core.synthetic import make_synthetic_slide, synthetic_region
from napari_gigapixel.core.train_config import learning_rate
from napari_gigapixel.core.unet import ModelConfig
from napari_gigapixel.core.white_field import white_field


def test_white_point_finds_the_glass_of_a_slide_array_and_file(tmp_path):
    from napari_gigapixel.core._synthetic_scene import get_scene

    shape = (512, 2048)
    rgb, _ = synthetic_region(shape, 3, 0, shape[0], 0, shape[1])
    glass = get_scene(shape, 3).background
    # The bright end of the glass (its illumination varies by about 1.5%).
    white = np.array(white_point(rgb))
    assert np.all(white >= glass - 1) and np.all(white <= glass + 12), (white, glass)
    slide, _ = make_synthetic_slide(tmp_path / "s.tif", shape=shape, seed=3)
    assert np.allclose(white_point(slide), white, atol=3)


def test_balance_maps_glass_to_one_white_pixel_by_pixel():
    table = balance_table((230.0, 240.0, 250.0))
    assert table.shape == (3, 256) and table.dtype == np.uint8
    assert table[0, 230] == WHITE
    assert table[1, 240] == WHITE and table[2, 250] == WHITE
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    out = apply_balance(block, table)
    # Element-wise: any window of the balanced block is the balanced window.
    np.testing.assert_array_equal(out[5:20, 7:30], apply_balance(block[5:20, 7:30], table))
    np.testing.assert_array_equal(out[..., 2], table[2][block[..., 2]])


def test_warmup_rises_linearly_then_follows_the_schedule():
    rates = [learning_rate(0.01, "cosine", k, 50, warmup=5) for k in range(50)]
    assert rates[:5] == pytest.approx([0.01 * (k + 1) / 6 for k in range(5)])
    assert rates[5] == pytest.approx(0.01)
    assert rates[-1] == pytest.approx(0.01 * 0.05)


def test_model_config_checks_input_statistics():
    cfg = ModelConfig(input_mean=[200, 190, 210], input_std=[30, 31, 29])
    assert cfg.input_mean == (200.0, 190.0, 210.0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(GigapixelError, match="both"):
        ModelConfig(input_mean=(1, 2, 3))
    with pytest.raises(GigapixelError, match="std > 0"):
        ModelConfig(input_mean=(1, 2, 3), input_std=(1, 0, 1))


def _toy(seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:128, 0:192]
    tissue = (np.sin(yy / 13.0) * np.cos(xx / 17.0)) > 0.1
    img = np.where(tissue[..., None], [200, 170, 205], [236, 234, 240])
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    return img, tissue.astype(np.uint8)


def test_trainer_records_statistics_prior_and_balance_and_predict_applies_them(tmp_path):
    pytest.importorskip("tensorflow")
    from napari_gigapixel.core.events import Finished, Message
    from napari_gigapixel.core.inference import PredictConfig, predict
    from napari_gigapixel.core.prediction_store import open_prediction
    from napari_gigapixel.core.training import TrainConfig, train
    from napari_gigapixel.core.unet import load_model

    img, mask = _toy()
    out = tmp_path / "m.keras"
    cfg = TrainConfig(
        images=[img], masks=[mask], out=str(out), steps=30, head_prior=True, checkpoint_every=0
    )
    notes = [e.text for e in train(cfg) if isinstance(e, Message)]
    assert any("glass colour" in n for n in notes)
    assert any("tissue prior" in n for n in notes)
    model, meta = load_model(out)
    mcfg = meta["model_config"]
    assert mcfg.white_balance is True and mcfg.white_field is True
    balanced = white_field(img).apply(img, 0, 0)
    flat = balanced.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mcfg.input_mean, flat.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(mcfg.input_std, flat.std(axis=0), rtol=1e-6)
    # The same slide under a darker, bluer glass predicts (nearly) the same mask.
    shifted = np.clip(img * np.array([0.93, 0.95, 0.99]), 0, 255).astype(np.uint8)
    masks = []
    for i, image in enumerate((img, shifted)):
        pred = tmp_path / f"p{i}.zarr"
        events = list(predict(PredictConfig(model=str(out), image=image, out=str(pred))))
        assert isinstance(events[-1], Finished)
        masks.append(np.asarray(open_prediction(str(pred)).mask[0]))
    assert (masks[0] != masks[1]).mean() < 0.01
    assert masks[0].mean() > 0.2


@pytest.mark.parametrize("transform", ["linear", "od"])
def test_statistics_from_histograms_equal_the_pixels_statistics(transform):
    from napari_gigapixel.core._keras_layers import input_transform_table
    from napari_gigapixel.core._train_data import statistics_from_histograms

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (n, 3), dtype=np.uint8) for n in (1000, 2500)]
    hists = [np.stack([np.bincount(im[:, c], minlength=256) for c in range(3)]) for im in images]
    mean, std = statistics_from_histograms(hists, transform)
    values = input_transform_table(transform)[np.concatenate(images)]
    np.testing.assert_allclose(mean, values.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, values.std(axis=0), rtol=1e-9)
    # Order of the images (or of the workers that counted them) does not matter.
    assert statistics_from_histograms(hists[::-1], transform) == (mean, std)


def test_model_config_checks_the_input_transform():
    assert ModelConfig().input_transform == "linear"  # files from before it load as before
    cfg = ModelConfig(input_transform="od")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(GigapixelError, match="input_transform 'log'"):
        ModelConfig(input_transform="log")


def test_optical_density_model_trains_saves_and_predicts(tmp_path):
    pytest.importorskip("tensorflow")
    from napari_gigapixel.core.inference import predict_array
    from napari_gigapixel.core.unet import load_model, preset_config

    img, mask = _toy()
    from napari_gigapixel.core.training import TrainConfig, train

    out = tmp_path / "od.keras"
    cfg = TrainConfig(
        images=[img],
        masks=[mask],
        out=str(out),
        steps=30,
        checkpoint_every=0,
        model=preset_config("small", input_transform="od"),
    )
    list(train(cfg))
    model, meta = load_model(out)
    mcfg = meta["model_config"]
    assert mcfg.input_transform == "od"
    balanced = white_field(img).apply(img, 0, 0)
    od = np.log10(256.0 / (balanced.reshape(-1, 3).astype(np.float64) + 1.0))
    np.testing.assert_allclose(mcfg.input_mean, od.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(mcfg.input_std, od.std(axis=0), rtol=1e-6)
    prob = predict_array(model, img)
    assert prob.shape[:2] == (32, 48)
    assert ((prob[..., 0] if prob.ndim == 3 else prob) > 0.5).mean() > 0.2


def test_cli_input_transform_reaches_the_model():
    from napari_gigapixel.cli import build_parser
    from napari_gigapixel.cli.train import build_config
    from napari_gigapixel.core.training import TrainConfig

    base = ["train", "--image", "a.tif", "--mask", "m.tif", "--out", "m.keras"]
    assert build_config(build_parser().parse_args(base)).model == TrainConfig().model
    for kind in ("od", "linear"):
        cfg = build_config(build_parser().parse_args([*base, "--input-transform", kind]))
        assert cfg.model.input_transform == kind
