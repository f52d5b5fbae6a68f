"""The command-line contract (docs/cli.md), checked for every command.

One form per concept: ``--json`` and ``--quiet`` everywhere, ``--overwrite``
wherever a command writes, ROI as ``Y0,X0,Y1,X1``, exit codes 0 ok, 1 error,
2 usage, 130 stopped, and every output location checked before any compute.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import tifffile

from napari_gigapixel import cli
from napari_gigapixel.cli import COMMANDS, build_parser, main
from napari_gigapixel.core import events as ev

#: Commands that write files, and so must take --overwrite.
WRITERS = ("sample", "pyramid", "train", "predict", "export", "demo")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings}


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_json_and_quiet(name):
    opts = _options(_subparsers()[name])
    assert {"--json", "--quiet"} <= opts


@pytest.mark.parametrize("name", WRITERS)
def test_every_writer_takes_overwrite(name):
    assert "--overwrite" in _options(_subparsers()[name])


def test_one_flag_name_per_knob():
    subs = _subparsers()
    # The old spellings are gone: one name for precision, one for a chunk side.
    for p in subs.values():
        opts = _options(p)
        assert "--mixed-precision" not in opts
    assert "--chunk" in _options(subs["pyramid"]) and "--tile" not in _options(subs["pyramid"])
    assert "--precision" in _options(subs["train"]) and "--precision" in _options(subs["predict"])


@pytest.mark.parametrize("name", ["train", "predict"])
def test_roi_is_top_left_then_bottom_right(name):
    p = _subparsers()[name]
    roi = next(a for a in p._actions if "--roi" in a.option_strings)
    assert roi.metavar == "Y0,X0,Y1,X1"
    assert cli._common.roi("10,20,110,220") == (10, 20, 110, 220)
    # (y0, y1, x0, x1) of a region below its corner is refused, as are malformed values.
    for bad in ("10,20,5,220", "1,2,3", "a,b,c,d", "-1,0,5,5"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._common.roi(bad)


@pytest.fixture()
def pair(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (128, 192, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", img, photometric="rgb")
    tifffile.imwrite(tmp_path / "m.tif", (img[::4, ::4, 0] > 128).astype(np.uint8))
    return tmp_path / "s.tif", tmp_path / "m.tif"


def _train_argv(pair, out, *extra):
    s, m = pair
    return [
        "train",
        "--image",
        str(s),
        "--mask",
        str(m),
        "--out",
        str(out),
        "--steps",
        "1",
        *extra,
    ]


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_nonsense_numbers_are_usage_errors(pair, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(_train_argv(pair, tmp_path / "o.keras", "--memory-gb", value))
    assert exc.value.code == 2
    assert "--memory-gb must be a finite number > 0" in capsys.readouterr().err


def test_train_refuses_to_replace_a_model_without_overwrite(pair, tmp_path, capsys):
    out = tmp_path / "o.keras"
    out.write_bytes(b"an earlier model")
    assert main(_train_argv(pair, out, "--quiet")) == 1
    err = capsys.readouterr().err.strip()
    assert "already exists; pass --overwrite" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == b"an earlier model"


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("missing/o.keras", "does not exist; create it first"),
        ("afile/o.keras", "is not a folder"),
        ("adir", "is a folder"),
    ],
)
def test_an_unwritable_output_fails_before_any_compute(pair, tmp_path, capsys, where, message):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.keras").mkdir()
    out = tmp_path / (where if where != "adir" else "adir.keras")
    argv = _train_argv(pair, out, "--overwrite", "--steps", "50")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_no_space_left_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.tif"))

    from napari_gigapixel.core import texture_slides

    monkeypatch.setattr(texture_slides, "iter_make_family_slide", full)
    code = main(["sample", str(tmp_path / "x.tif"), "--shape", "256x256", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "x.tif: No space left on device. Free some disk space" in err


@pytest.mark.parametrize("name", ["train", "predict", "sample", "pyramid"])
def test_a_stopped_command_exits_130(name, pair, tmp_path, monkeypatch, capsys):
    s, m = pair

    def stopped(events, **_k):
        close = getattr(events, "close", None)
        if close:
            close()
        return ev.Finished(result={}, stopped=True)

    monkeypatch.setattr("napari_gigapixel.cli._progress.follow", stopped)
    model = tmp_path / "model.keras"
    if name == "predict":
        _write_tiny_model(model)
    argv = {
        "train": _train_argv(pair, tmp_path / "o.keras"),
        "predict": [
            "predict",
            "--model",
            str(model),
            "--image",
            str(s),
            "--out",
            str(tmp_path / "p.zarr"),
        ],
        "sample": ["sample", str(tmp_path / "x.tif"), "--shape", "256x256"],
        "pyramid": ["pyramid", str(s), str(tmp_path / "p.ome.zarr")],
    }[name]
    assert main([*argv, "--quiet"]) == 130


#: A value each flag can never take: a usage error (exit 2) in every command alike.
NONSENSE = [
    ("train", "--seed", "-1", "whole number >= 0"),
    ("train", "--warmup", "-1", "whole number >= 0"),
    ("train", "--border-weight", "0", "whole number >= 1 and <= 64"),
    ("train", "--pen-weight", "65", "whole number >= 1 and <= 64"),
    ("train", "--mpp", "0", "finite number > 0"),
    ("train", "--level", "-1", "whole number >= 0"),
    ("predict", "--threshold", "1.5", "finite number >= 0 and <= 1"),
    ("predict", "--min-width-um", "nan", "finite number >= 0"),
    ("predict", "--min-object-um2", "-1", "finite number >= 0"),
    ("predict", "--min-hole-um2", "inf", "finite number >= 0"),
    ("evaluate", "--mpp", "nan", "finite number > 0"),
    ("export", "--tolerance", "nan", "finite number >= 0"),
    ("export", "--min-area", "inf", "finite number >= 0"),
    ("sample", "--seed", "-2", "whole number >= 0"),
    ("sample", "--mpp", "-0.5", "finite number > 0"),
]


@pytest.mark.parametrize(("command", "flag", "value", "says"), NONSENSE)
def test_a_value_a_flag_never_takes_is_a_usage_error(tmp_path, capsys, command, flag, value, says):
    base = {
        "train": [
            "train",
            "--image",
            "s.tif",
            "--mask",
            "m.tif",
            "--out",
            str(tmp_path / "o.keras"),
        ],
        "predict": ["predict", "--model", "m.keras", "--image", "s.tif", "--out", "p.zarr"],
        "evaluate": ["evaluate", "--pred", "p.zarr", "--truth", "m.tif"],
        "export": ["export", "p.zarr", str(tmp_path / "o.geojson")],
        "sample": ["sample", str(tmp_path / "s.tif")],
    }[command]
    with pytest.raises(SystemExit) as exc:
        main([*base, flag, value])
    assert exc.value.code == 2
    assert f"{flag} must be a {says}, got {value}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_json_reports_an_error_on_its_last_line(tmp_path, capsys):
    code = main(["evaluate", "--pred", str(tmp_path / "no.zarr"), "--truth", "m.tif", "--json"])
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert code == 1 and report["exit_code"] == 1 and report["command"] == "evaluate"
    assert report["stopped"] is False and "no.zarr" in report["error"]
    assert "no.zarr" in captured.err  # the one line for people is still there


def test_ctrl_c_under_quiet_json_says_nothing_but_the_json(pair, tmp_path, monkeypatch, capsys):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr("napari_gigapixel.cli._progress.follow", interrupted)
    assert main(_train_argv(pair, tmp_path / "o.keras", "--quiet", "--json")) == 130
    captured = capsys.readouterr()
    assert captured.err == ""
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert report == {"command": "train", "exit_code": 130, "error": None, "stopped": True}


def test_ctrl_c_exits_130(pair, tmp_path, monkeypatch, capsys):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr("napari_gigapixel.cli._progress.follow", interrupted)
    assert main(_train_argv(pair, tmp_path / "o.keras")) == 130
    assert "stopped" in capsys.readouterr().err


def test_train_quiet_json_prints_only_the_json(pair, tmp_path, capsys):
    out = tmp_path / "o.keras"
    assert main(_train_argv(pair, out, "--quiet", "--json", "--tile", "64")) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["steps"] == 1
    assert captured.err == ""  # no bar, no messages
    assert out.is_file()


def test_json_is_strict(capsys):
    cli._common.print_json({"a": math.nan, "b": [math.inf, 1.0], "c": {"d": -math.inf}})
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [None, 1.0], "c": {"d": None}}


def _write_tiny_model(path) -> None:
    from napari_gigapixel.core.unet import ModelConfig, build_unet, model_geometry, save_model

    cfg = ModelConfig()
    model = build_unet(cfg)
    save_model(model, path, geometry=model_geometry(model), model_config=cfg)


def test_every_writer_of_the_python_api_refuses_to_replace_in_the_same_words(tmp_path):
    """The overwrite rule of the core functions, in check_output's words."""
    from napari_gigapixel.core.export import ExportError, export_geojson
    from napari_gigapixel.core.mask_write import write_mask
    from napari_gigapixel.core.masks import MaskError
    from napari_gigapixel.core.prediction_store import PredictionError, commit_store
    from napari_gigapixel.core.pyramid import PyramidError, build_pyramid

    slide = tmp_path / "s.tif"
    tifffile.imwrite(slide, np.full((64, 64, 3), 200, np.uint8), photometric="rgb")
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 8:40] = 1
    for name in ("m.tif", "p.zarr", "o.geojson", "store.zarr"):
        (tmp_path / name).write_bytes(b"made by the user")
    (tmp_path / "tmp.zarr").mkdir()
    calls = [
        (MaskError, lambda: write_mask(tmp_path / "m.tif", mask)),
        (PyramidError, lambda: list(build_pyramid(slide, tmp_path / "p.zarr"))),
        (ExportError, lambda: export_geojson(mask, tmp_path / "o.geojson")),
        (
            PredictionError,
            lambda: commit_store(tmp_path / "tmp.zarr", tmp_path / "store.zarr", overwrite=False),
        ),
    ]
    for error, call in calls:
        with pytest.raises(error) as exc:
            call()
        assert str(exc.value).endswith("already exists; pass --overwrite to replace it.")
    for name in ("m.tif", "p.zarr", "o.geojson", "store.zarr"):
        assert (tmp_path / name).read_bytes() == b"made by the user"
