"""The resolution pickers' choices and their measured cost model."""

from __future__ import annotations

import dataclasses

import pytest
from test_resolution import _slide

from napari_gigapixel.core import resolution_cost as rc
from napari_gigapixel.core.resolution import Resolution


def test_choices_list_levels_then_common_mpp_with_their_cost():
    s = _slide((2048, 4096), mpp=0.25, n_levels=4)  # downsamples 1, 2, 4, 8
    ch = rc.choices(s, memory_gb=3.5)
    heads = [c.label.split(" · ")[0] for c in ch]
    # 1 um/px is level 2 and 2 um/px level 3 (listed once); 4 um/px: 2x2 of level 3...
    assert heads == ["level 0", "level 1", "level 2", "level 3"] + [
        f"level 3, {k}x{k} mean" for k in (2, 4, 8)
    ]
    first, last = ch[0], ch[-1]
    assert (
        "0.25 um/px" in first.label
        and "8.39 Mpx · ~0.34 s/step" in first.label
        and "s/step" in first.label
    )
    assert last.request == Resolution(mpp=16.0) and last.resolved.downsample == 64.0
    assert "16 um/px · <0.01 Mpx · <0.01 s/step" in last.label
    # Coarser is cheaper; the estimates are the measured model's.
    assert [c.seconds for c in ch] == sorted((c.seconds for c in ch), reverse=True)
    assert first.seconds == pytest.approx(2048 * 4096 / 1e6 / rc.TRAIN_MPX_PER_S)
    assert rc.BASELINE_BYTES < last.peak_bytes < first.peak_bytes


def test_without_mpp_only_levels_and_predict_puts_the_model_first():
    s = _slide((512, 1024), mpp=None, n_levels=2)
    assert [c.request for c in rc.choices(s)] == [Resolution(level=0), Resolution(level=1)]
    ch = rc.choices(s, kind="predict", model_meta={"resolution": {"mpp": 1, "downsample": 2}})
    assert ch[0].request is None and ch[0].label.startswith("as trained (1 um/px)")
    assert ch[0].resolved.downsample == 2.0 and "s/step" not in ch[0].label


def test_the_prediction_estimate_counts_the_test_time_passes():
    s = _slide((512, 1024), mpp=None, n_levels=1)
    meta = {"resolution": {"downsample": 1}}
    default = rc.choices(s, kind="predict", model_meta=meta)[0]  # predict's default
    assert default.seconds == pytest.approx(512 * 1024 / 1e6 / rc.PREDICT_HALF_DARKER_MPX_PER_S)
    flips = rc.choices(s, kind="predict", model_meta=meta, tta="flips")[0]
    none = rc.choices(s, kind="predict", model_meta=meta, tta="none")[0]
    assert flips.seconds < default.seconds < 1.5 * flips.seconds  # 4 passes each
    assert flips.seconds == pytest.approx(512 * 1024 / 1e6 / rc.PREDICT_FLIPS_MPX_PER_S)
    assert none.seconds == pytest.approx(512 * 1024 / 1e6 / rc.PREDICT_MPX_PER_S)
    assert flips.seconds > 1.5 * none.seconds and flips.peak_bytes == none.peak_bytes
    darker = rc.choices(s, kind="predict", model_meta=meta, tta="flips+darker")[0]
    assert darker.seconds == pytest.approx(512 * 1024 / 1e6 / rc.PREDICT_FLIPS_DARKER_MPX_PER_S)
    assert darker.seconds > 1.5 * flips.seconds
    from napari_gigapixel.core.tiled_model import TTA_MODES

    assert set(rc.PREDICT_RATES) == set(TTA_MODES)  # no mode falls back to another's rate


def test_the_training_memory_model_follows_the_budget():
    small_budget = rc.train_cost((16384, 16384), 2.0)[1]
    big_budget = rc.train_cost((16384, 16384), 8.0)[1]
    assert small_budget <= 2.0 * 2**30 < big_budget <= 8.0 * 2**30


def test_the_model_constants_match_the_default_model():
    pytest.importorskip("tensorflow")
    from napari_gigapixel.core._resources import bytes_per_pixel
    from napari_gigapixel.core.train_config import TrainConfig
    from napari_gigapixel.core.unet import build_unet, model_geometry

    m = build_unet(TrainConfig().model, seed=0)
    assert model_geometry(m) == rc.DEFAULT_GEOMETRY
    assert bytes_per_pixel(m) == pytest.approx(rc.BYTES_PER_PIXEL["float32"], abs=0.01)
    mixed = build_unet(TrainConfig().model, seed=0, dtype="mixed_bfloat16")
    assert bytes_per_pixel(mixed) == pytest.approx(rc.BYTES_PER_PIXEL["bf16"], abs=0.01)


def test_augmented_training_plans_for_the_transform_working_set():
    """An augmenting run's windows hold the transformed copy and the kernel's temporaries
    too (measured: without them the recipe's 1 Gpx run peaked at 4.05 GiB on 3.5):
    the tile plan, and the picker's estimate, count them per window pixel for the
    steps that augment (AUGMENT_BYTES; the ink alone, which recolours the window in
    place, INK_BYTES), and validation (never augmented) does not."""
    pytest.importorskip("tensorflow")
    from napari_gigapixel.core._resources import (
        AUGMENT_BYTES,
        INK_BYTES,
        auto_core,
        bytes_per_pixel,
    )
    from napari_gigapixel.core.train_config import TrainConfig
    from napari_gigapixel.core.training import drawn_augment
    from napari_gigapixel.core.unet import build_unet

    cfg = TrainConfig()
    m = build_unet(cfg.model, seed=0)
    plain = bytes_per_pixel(m)
    assert bytes_per_pixel(m, augment="all") == pytest.approx(plain + AUGMENT_BYTES)
    assert bytes_per_pixel(m, augment="flip") == pytest.approx(plain + AUGMENT_BYTES)
    assert bytes_per_pixel(m, augment="ink") == pytest.approx(plain + INK_BYTES)
    assert 0 < INK_BYTES < AUGMENT_BYTES
    balanced = dataclasses.replace(cfg.model, white_balance=True)
    assert drawn_augment(cfg, balanced) == "pen"  # "auto" on a balanced model
    # pen+flip turns the window through the flip's kernel
    assert bytes_per_pixel(m, augment="pen+flip") == pytest.approx(plain + AUGMENT_BYTES)
    assert drawn_augment(cfg, cfg.model) == "none"
    assert drawn_augment(dataclasses.replace(cfg, augment="flip"), cfg.model) == "flip"
    assert drawn_augment(dataclasses.replace(cfg, augment="none"), balanced) == "none"
    budget = 2.0 * 2**30
    shape = (16384, 65536)
    geo = rc.DEFAULT_GEOMETRY
    assert auto_core(shape, geo, plain + AUGMENT_BYTES, budget) < auto_core(
        shape, geo, plain, budget
    )
    assert rc.train_cost(shape, 3.5, bpp=plain) == rc.train_cost(
        shape, 3.5, bpp=plain + INK_BYTES, augment="none"
    )
    assert rc.train_cost(shape, 3.5, bpp=plain, augment="all") == rc.train_cost(
        shape, 3.5, bpp=plain + AUGMENT_BYTES, augment="none"
    )


def test_a_continued_checkpoint_lists_only_its_own_resolution():
    from napari_gigapixel.core.resolution import ResolutionError, trained_request

    s = _slide((2048, 4096), mpp=0.25, n_levels=4)
    meta = {"resolution": {"mpp": 1.0, "downsample": 4.0, "request": {"level": 2}}}
    assert trained_request(meta) == Resolution(level=2)
    c = rc.checkpoint_choice(s, meta, memory_gb=3.5)
    assert c.request is None  # TrainConfig.resolution None: the checkpoint's
    assert c.label.startswith("as checkpoint (level 2) · 1 um/px · 0.524 Mpx · ~")
    assert (c.resolved.level, c.resolved.downsample) == (2, 4.0)
    assert (c.seconds, c.peak_bytes) == rc.train_cost((512, 1024), 3.5)
    # No entry: a level-0 model; a level this slide lacks is the trainer's error too.
    assert rc.checkpoint_choice(s, {}).label.startswith("as checkpoint (level 0) · 0.25 um/px")
    with pytest.raises(ResolutionError):
        rc.checkpoint_choice(s, {"resolution": {"request": {"level": 9}}})
