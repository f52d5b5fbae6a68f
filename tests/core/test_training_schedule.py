"""The trainer's learning-rate schedule and its default recipe."""

from __future__ import annotations

import numpy as np
import pytest

from napari_gigapixel.core.training import (
    LR_FLOOR,
    TrainConfig,
    TrainConfigError,
    learning_rate,
    train,
)


def test_cosine_falls_from_lr_to_the_floor():
    rates = [learning_rate(0.01, "cosine", k, 50) for k in range(50)]
    assert rates[0] == pytest.approx(0.01)
    assert rates[-1] == pytest.approx(0.01 * LR_FLOOR)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert learning_rate(0.01, "cosine", 0, 1) == pytest.approx(0.01)


def test_constant_schedule_keeps_lr():
    assert {learning_rate(0.003, "constant", k, 20) for k in range(20)} == {0.003}


def test_default_recipe():
    from napari_gigapixel.core.unet import preset_name

    # Soft Dice alone collapses to "everything is tissue" from scratch (see
    # TrainConfig's docstring); the default is the measured recipe instead.
    cfg = TrainConfig()
    assert (cfg.loss, cfg.lr, cfg.lr_schedule, cfg.steps) == ("dice+focal", 1e-2, "cosine", 150)
    assert preset_name(cfg.model) == "medium"
    assert (cfg.white_balance, cfg.standardize, cfg.head_prior, cfg.warmup) == (
        True,
        True,
        False,
        0,
    )


def test_unknown_schedule_is_refused_before_anything_runs(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    mask = np.ones((64, 64), np.uint8)
    cfg = TrainConfig(
        images=[img], masks=[mask], out=str(tmp_path / "m.keras"), lr_schedule="linear"
    )
    with pytest.raises(TrainConfigError, match="lr_schedule"):
        next(train(cfg))
    assert not (tmp_path / "m.keras").exists()


def test_steps_follow_the_schedule_and_record_it(tmp_path):
    from napari_gigapixel.core.events import StepEvent
    from napari_gigapixel.core.unet import ModelConfig, load_model

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    tissue = (np.sin(yy / 11.0) * np.cos(xx / 13.0)) > 0
    img = np.where(tissue[..., None], [180, 90, 160], [235, 230, 235])
    img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
    out = tmp_path / "m.keras"
    cfg = TrainConfig(
        images=[img],
        masks=[tissue.astype(np.uint8)],
        out=str(out),
        steps=4,
        lr=0.02,
        model=ModelConfig(widths=(4, 4, 4), decoder_widths=(2, 2, 2)),
        mixed_precision=False,
    )
    steps = [e for e in train(cfg) if isinstance(e, StepEvent)]
    want = [learning_rate(0.02, "cosine", k, 4) for k in range(4)]
    assert [e.extra["lr"] for e in steps] == pytest.approx(want)
    model, meta = load_model(str(out))
    assert [h["lr"] for h in meta["history"]] == pytest.approx(want)
    # The optimizer really ran the last step at the scheduled rate.
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(want[-1], rel=1e-6)
