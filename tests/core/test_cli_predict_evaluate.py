"""``napari-gigapixel predict`` and ``evaluate``: figures, --json, --overwrite, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from napari_gigapixel.cli import main

SHAPE = (384, 896)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from napari_gigapixel.core.synthetic import make_synthetic_slide
    from napari_gigapixel.core.unet import ModelConfig, build_unet, model_geometry, save_model

    d = tmp_path_factory.mktemp("cli")
    slide, mask = make_synthetic_slide(d / "slide.tif", shape=SHAPE, seed=2, tile=256)
    model = build_unet(ModelConfig(), seed=0)
    save_model(model, d / "m.keras", geometry=model_geometry(model))
    return d, str(slide), str(mask), str(d / "m.keras")


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_predict_then_evaluate_with_json(files, tmp_path, capsys):
    _, slide, mask, model = files
    out = str(tmp_path / "p.zarr")
    rc = main(["predict", "--model", model, "--image", slide, "--out", out, "--json", "--quiet"])
    res = _last_json(capsys.readouterr().out)
    assert rc == 0 and res["out"] == out and res["shape"] == list(SHAPE)
    assert res["downsample"] == 4.0 and res["mpx_per_s"] > 0

    rc = main(["evaluate", "--pred", out, "--truth", mask, "--json"])
    figs = _last_json(capsys.readouterr().out)
    assert rc == 0
    for key in ("dice", "iou", "precision", "recall", "otsu_dice"):
        assert 0.0 <= figs[key] <= 1.0, key
    assert figs["pixels"] == SHAPE[0] * SHAPE[1]
    assert figs["otsu_dice"] > 0.5  # the slide path came from the prediction's metadata

    rc = main(["evaluate", "--pred", out, "--truth", mask])
    text = capsys.readouterr().out
    assert rc == 0 and "dice" in text and "Otsu Dice" in text


def test_overwrite_semantics(files, tmp_path, capsys):
    _, slide, _, model = files
    out = tmp_path / "p.zarr"
    args = ["predict", "--model", model, "--image", slide, "--out", str(out), "--quiet"]
    assert main([*args, "--threshold", "0.2"]) == 0
    stamp = (out / ".zattrs").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*args, "--threshold", "0.7"]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / ".zattrs").stat().st_mtime_ns == stamp
    assert main([*args, "--threshold", "0.7", "--overwrite", "--json"]) == 0
    meta = json.loads((out / ".zattrs").read_text())["napari_gigapixel"]
    assert meta["threshold"] == 0.7 and meta["complete"] is True
    assert sorted(os.listdir(tmp_path)) == ["p.zarr"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "--image", "{d}/nope.tif", "--out", "{t}/o.zarr"], "nope.tif: no such file"),
        (
            ["predict", "--image", "{slide}", "--out", "{t}/o.zarr", "--model", "{mask}"],
            "mask.tif",
        ),
        (["predict", "--image", "{slide}", "--out", "{t}/no/o.zarr"], "does not exist"),
        (["evaluate", "--pred", "{t}", "--truth", "{mask}"], "not a napari-gigapixel prediction"),
        (["evaluate", "--pred", "{t}", "--truth", "{d}/none.tif"], "none.tif: no such mask"),
    ],
)
def test_bad_input_is_one_clear_line_and_writes_nothing(files, tmp_path, capsys, argv, message):
    d, slide, mask, model = files
    fill = {"d": str(d), "t": str(tmp_path), "slide": slide, "mask": mask}
    argv = [a.format(**fill) for a in argv]
    if argv[0] == "predict" and "--model" not in argv:
        argv += ["--model", model]
    assert main(argv) == 1  # an error in the input: exit 1, one line
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_a_malformed_roi_is_a_usage_error(files, tmp_path, capsys):
    _, slide, _, model = files
    argv = ["predict", "--model", model, "--image", slide, "--out", str(tmp_path / "o.zarr")]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--roi", "1,2"])
    assert exc.value.code == 2
    assert "--roi wants four numbers Y0,X0,Y1,X1" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_predict_on_a_distributed_scheduler_matches_threads(files, tmp_path, capsys):
    from distributed import LocalCluster

    from napari_gigapixel.core.inference import open_prediction

    _, slide, _, model = files
    base = ["predict", "--model", model, "--image", slide, "--quiet", "--chunk", "256"]
    assert main([*base, "--out", str(tmp_path / "t.zarr")]) == 0
    # In-process workers: the graph still goes through the scheduler, tasks
    # read the slide by path and load the model through the per-process cache.
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False) as cluster:
        addr = cluster.scheduler_address
        assert main([*base, "--out", str(tmp_path / "d.zarr"), "--scheduler", addr]) == 0
    t = open_prediction(tmp_path / "t.zarr")
    d = open_prediction(tmp_path / "d.zarr")
    assert (d.mask[0].compute() == t.mask[0].compute()).all()
    assert (d.probability[0].compute() == t.probability[0].compute()).all()


def test_predict_clean_flags(files, tmp_path, capsys):
    from napari_gigapixel.core.inference import open_prediction
    from napari_gigapixel.core.mask_clean import clean_block
    from napari_gigapixel.core.synthetic import MPP

    _, slide, _, model = files
    base = ["predict", "--model", model, "--image", slide, "--quiet", "--json", "--chunk", "256"]
    off = ["--min-width-um", "0", "--min-object-um2", "0", "--min-hole-um2", "0"]
    assert main([*base, "--out", str(tmp_path / "raw.zarr"), *off]) == 0
    raw = _last_json(capsys.readouterr().out)
    assert raw["clean"]["applied"] is False
    on = ["--min-width-um", "8", "--min-object-um2", "300", "--min-hole-um2", "100"]
    assert main([*base, "--out", str(tmp_path / "c.zarr"), *on]) == 0
    res = _last_json(capsys.readouterr().out)
    c = res["clean"]
    assert c["grid_um_per_px"] == pytest.approx(MPP * 4)  # the slide's um/px x stride 4
    assert (c["min_width_um"], c["min_object_um2"], c["min_hole_um2"]) == (8.0, 300.0, 100.0)
    assert c["radius_px"] == pytest.approx(4.0 / (MPP * 4))
    assert c["min_hole_px"] == pytest.approx(100.0 / (MPP * 4) ** 2)
    rawm = open_prediction(tmp_path / "raw.zarr").mask[0].compute()
    got = open_prediction(tmp_path / "c.zarr").mask[0].compute()
    assert (got != rawm).any()  # the flags did something
    np.testing.assert_array_equal(
        got, clean_block(rawm, c["radius_px"], c["min_object_px"], c["min_hole_px"])
    )
    assert res["tissue_fraction"] == pytest.approx(got.mean())


@pytest.mark.parametrize("bad", ["-5", "nan"])
def test_predict_refuses_a_bad_clean_value(files, tmp_path, capsys, bad):
    _, slide, _, model = files
    out = str(tmp_path / "o.zarr")
    argv = ["predict", "--model", model, "--image", slide, "--out", out, "--min-object-um2", bad]
    with pytest.raises(SystemExit) as exc:  # a value the flag never takes: usage
        main(argv)
    assert exc.value.code == 2
    assert "--min-object-um2 must be a finite number >= 0" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_predict_tta_flag(files, tmp_path, capsys):
    from napari_gigapixel.core.inference import open_prediction

    _, slide, _, model = files
    base = ["predict", "--model", model, "--image", slide, "--quiet", "--json", "--chunk", "256"]
    assert main([*base, "--out", str(tmp_path / "f.zarr")]) == 0
    assert _last_json(capsys.readouterr().out)["tta"] == "half-darker"  # the default
    assert main([*base, "--out", str(tmp_path / "n.zarr"), "--tta", "none"]) == 0
    assert _last_json(capsys.readouterr().out)["tta"] == "none"
    f = open_prediction(tmp_path / "f.zarr").probability[0].compute()
    n = open_prediction(tmp_path / "n.zarr").probability[0].compute()
    assert (f != n).any()
    with pytest.raises(SystemExit):  # argparse: a usage error naming the choices
        main([*base, "--out", str(tmp_path / "x.zarr"), "--tta", "mirror"])
    assert "invalid choice: 'mirror'" in capsys.readouterr().err
    assert not (tmp_path / "x.zarr").exists()
