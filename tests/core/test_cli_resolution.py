"""``--mpp`` / ``--level`` on train, predict and evaluate, end to end on a small slide."""

from __future__ import annotations

import json

import pytest

from napari_gigapixel.cli import main

SHAPE = (384, 896)  # synthetic slides record 0.5 um/px; levels at downsample 1, 2, 4


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from napari_gigapixel.core.synthetic import make_synthetic_slide

    d = tmp_path_factory.mktemp("clires")
    slide, mask = make_synthetic_slide(d / "slide.tif", shape=SHAPE, seed=2, tile=256)
    return d, str(slide), str(mask)


def test_train_at_a_level_then_predict_and_evaluate_there(files, capsys):
    d, slide, mask = files
    model = str(d / "m.keras")
    rc = main(
        ["train", "--image", slide, "--mask", mask, "--out", model, "--steps", "1"]
        + ["--level", "1", "--precision", "float32", "--json"]
    )
    res = _last_json(capsys.readouterr().out)
    assert rc == 0 and res["resolution"]["downsample"] == 2.0 and res["resolution"]["mpp"] == 1.0
    assert res["megapixels"] == pytest.approx(192 * 448 / 1e6)
    out = str(d / "p.zarr")
    rc = main(["predict", "--model", model, "--image", slide, "--out", out, "--json", "--quiet"])
    cap = capsys.readouterr()
    res = _last_json(cap.out)
    assert rc == 0 and res["resolution"]["mpp"] == 1.0 and res["downsample"] == 8.0
    assert "model's resolution, 1 um/px" in res["resolution"]["note"]
    rc = main(["evaluate", "--pred", out, "--truth", mask, "--mpp", "2", "--json"])
    figs = _last_json(capsys.readouterr().out)
    assert rc == 0 and figs["resolution"]["level"] == 2 and figs["pixels"] == 96 * 224
    # --level overrides the model's resolution.
    out0 = str(d / "p0.zarr")
    argv = ["predict", "--model", model, "--image", slide, "--out", out0, "--json", "--quiet"]
    assert main([*argv, "--level", "0"]) == 0
    assert _last_json(capsys.readouterr().out)["downsample"] == 4.0


def test_bad_resolution_flags(files, tmp_path, capsys):
    _, slide, mask = files
    argv = ["train", "--image", slide, "--mask", mask, "--out", str(tmp_path / "m.keras")]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--mpp", "1", "--level", "1"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
    rc = main([*argv, "--mpp", "0.6", "--steps", "1"])  # downsample 1.2: no level, no factor
    assert rc != 0 and "within 10%" in capsys.readouterr().err
    assert not (tmp_path / "m.keras").exists()
