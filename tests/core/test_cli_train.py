"""``napari-gigapixel train``: end to end on small slide files, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_gigapixel.cli import main  # noqa: E402
from napari_gigapixel.core.unet import load_model  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    shape = (192, 260)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    tissue = (np.sin(yy / 19.0) * np.cos(xx / 27.0)) > 0
    img = np.where(tissue[..., None], [170, 80, 150], [235, 232, 236]).astype(np.float64)
    img = np.clip(img + rng.normal(0, 15, img.shape), 0, 255).astype(np.uint8)
    tifffile.imwrite(d / "slide.tif", img, photometric="rgb")
    # The mask at 1/4 of the slide: its level is inferred from the shape ratio.
    tifffile.imwrite(d / "mask.tif", tissue[::4, ::4].astype(np.uint8))
    tifffile.imwrite(d / "multichannel.tif", np.zeros((5, 192, 260), np.uint16))  # not RGB
    tifffile.imwrite(d / "empty.tif", np.zeros((48, 65), np.uint8))
    tifffile.imwrite(d / "wrong.tif", np.ones((100, 20), np.uint8))
    return d


def _train(files, out, *extra):
    return main(
        [
            "train",
            "--image",
            str(files / "slide.tif"),
            "--mask",
            str(files / "mask.tif"),
            "--out",
            str(out),
            "--steps",
            "2",
            "--seed",
            "3",
            "--json",
            "--precision",
            "float32",  # tile-size independence to 1e-5
            *extra,
        ]
    )


def test_train_writes_model_and_json_figures(files, tmp_path, capsys):
    out = tmp_path / "m.keras"
    assert _train(files, out, "--tile", "64", "--loss", "dice+bce", "--lr", "0.01") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    assert figures["steps"] == 2 and figures["tile"] == 64 and figures["n_tiles"] > 1
    assert figures["peak_rss_bytes"] > 0 and figures["seconds_per_step"] > 0
    assert 0 <= figures["dice"] <= 1 and figures["loss"] > 0
    model, meta = load_model(out)
    assert len(meta["history"]) == 2 and meta["train_config"]["tile"] == 64


def test_same_seed_different_tile_same_weights(files, tmp_path, capsys):
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    assert _train(files, a, "--tile", "64") == 0
    assert _train(files, b, "--tile", "auto") == 0
    capsys.readouterr()
    for x, y in zip(load_model(a)[0].get_weights(), load_model(b)[0].get_weights()):
        np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.parametrize(
    "image,mask,match",
    [
        ("missing.tif", "mask.tif", "missing.tif"),
        ("slide.tif", "wrong.tif", "wrong.tif"),
        ("multichannel.tif", "mask.tif", "multichannel.tif"),
        ("slide.tif", "empty.tif", "empty.tif"),
    ],
)
def test_bad_input_one_line_error_nonzero_exit_nothing_written(
    files, tmp_path, capsys, image, mask, match
):
    out = tmp_path / "m.keras"
    out.write_bytes(b"previous model")
    code = main(
        [
            "train",
            "--image",
            str(files / image),
            "--mask",
            str(files / mask),
            "--out",
            str(out),
            "--steps",
            "1",
            "--overwrite",  # so that the bad input, not the existing file, is what stops it
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert match in err and "Traceback" not in err
    assert out.read_bytes() == b"previous model"


def test_foreign_model_to_resume_is_refused(files, tmp_path, capsys):
    foreign = tmp_path / "foreign.keras"
    foreign.write_bytes(b"PK\x03\x04 not really")
    code = _train(files, tmp_path / "m.keras", "--resume", str(foreign))
    assert code != 0 and "foreign.keras" in capsys.readouterr().err
    assert not (tmp_path / "m.keras").exists()


def test_validation_flags_keep_the_best_model_and_report_it(files, tmp_path, capsys):
    out = tmp_path / "v.keras"
    code = _train(
        files,
        out,
        "--tile",
        "64",
        "--steps",
        "3",
        "--val-roi",
        "64,64,128,160",
        "--val-image",
        str(files / "slide.tif"),
        "--val-mask",
        str(files / "mask.tif"),
        "--val-every",
        "2",
    )
    assert code == 0
    captured = capsys.readouterr()
    figures = json.loads(captured.out.strip().splitlines()[-1])
    assert 0 <= figures["val_dice"] <= 1 and figures["val_loss"] > 0
    assert figures["best_step"] in (2, 3) and 0 <= figures["best_val_dice"] <= 1
    assert figures["best_model"] == str((tmp_path / "v.best.keras").resolve())
    _, meta = load_model(figures["best_model"])
    assert meta["history"][-1]["step"] == figures["best_step"]
    history = load_model(out)[1]["history"]
    # Validated after step 2 (every 2) and after the last step (3).
    assert ["val_dice" in h for h in history] == [False, True, True]
    assert meta["train_config"]["val_roi"] == [64, 64, 128, 160]
    assert "left out of training" in captured.err
    # The progress line shows the last validation and the best so far.
    assert f"best={figures['best_val_dice']:.4f}@{figures['best_step']}" in captured.err


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--val-image", "x.tif"], "one --val-mask per --val-image"),
        (["--val-roi", "1,2,3"], "--val-roi wants four numbers"),
        (["--val-every", "0"], "--val-every must be a whole number >= 1"),
    ],
)
def test_bad_validation_flags_are_usage_errors(files, tmp_path, capsys, extra, match):
    out = tmp_path / "m.keras"
    try:
        code = _train(files, out, *extra)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_recipe_switches_reach_the_config_and_default_to_train_config():
    from napari_gigapixel.cli import build_parser
    from napari_gigapixel.cli.train import build_config
    from napari_gigapixel.core.training import TrainConfig

    base = ["train", "--image", "a.tif", "--mask", "m.tif", "--out", "m.keras"]
    cfg = build_config(build_parser().parse_args(base))
    d = TrainConfig()
    assert (cfg.steps, cfg.lr, cfg.white_balance, cfg.standardize, cfg.head_prior, cfg.warmup) == (
        d.steps,
        d.lr,
        d.white_balance,
        d.standardize,
        d.head_prior,
        d.warmup,
    )
    from napari_gigapixel.core.stain import augment_mode

    assert (cfg.loss, cfg.lr_schedule, cfg.tile, cfg.seed, cfg.memory_gb) == (
        d.loss,
        d.lr_schedule,
        d.tile,
        d.seed,
        d.memory_gb,
    )
    assert augment_mode(cfg.augment) == augment_mode(d.augment)
    args = [*base, "--no-white-balance", "--no-standardize", "--head-prior", "--warmup", "5"]
    cfg = build_config(build_parser().parse_args(args))
    assert (cfg.white_balance, cfg.standardize, cfg.head_prior, cfg.warmup) == (
        False,
        False,
        True,
        5,
    )
    assert cfg.model == d.model


def test_model_size_presets_are_one_set_for_cli_and_widget():
    """``--model-size`` builds core's preset; its name round-trips; unknown names are refused."""
    from napari_gigapixel.cli import build_parser
    from napari_gigapixel.cli.train import build_config
    from napari_gigapixel.core.errors import GigapixelError
    from napari_gigapixel.core.unet import PRESETS, preset_config, preset_name

    base = ["train", "--image", "a.tif", "--mask", "m.tif", "--out", "m.keras"]
    for name in PRESETS:
        cfg = build_config(build_parser().parse_args([*base, "--model-size", name]))
        assert preset_name(cfg.model) == name
        assert cfg.model == preset_config(name)
    cfg = build_config(build_parser().parse_args([*base, "--model-size", "medium"]))
    assert cfg.model.widths == PRESETS["medium"]["widths"]
    assert cfg.model.widths != preset_config("small").widths
    with pytest.raises(GigapixelError, match="unknown model size 'huge'"):
        preset_config("huge")
