"""``napari-gigapixel export``: exit codes, --overwrite, --json, a mask file with --slide."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_gigapixel.cli import main
from napari_gigapixel.core.mask_io import load_mask
from napari_gigapixel.core.prediction_store import (
    build_pyramids,
    commit_store,
    create_store,
    mark_complete,
)


@pytest.fixture
def prediction(tmp_path) -> str:
    """A 1/4 prediction of a 200 x 320 slide: one square with a hole, one bar."""
    level = np.zeros((50, 80), np.uint8)
    level[5:25, 5:25] = 1
    level[10:15, 10:15] = 0
    level[35:45, 40:75] = 1
    meta = {
        "kind": "prediction",
        "downsample": 4.0,
        "slide_shape": [200, 320],
        "offset": [0, 0],
        "region_shape": [200, 320],
        "threshold": 0.5,
    }
    tmp, out = str(tmp_path / "p.partial"), str(tmp_path / "p.zarr")
    prob, mask = create_store(tmp, level.shape, 32, meta)
    prob[:], mask[:] = level * 255, level
    build_pyramids(tmp)
    mark_complete(tmp)
    commit_store(tmp, out, overwrite=False)
    return out


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_export_json_overwrite_and_exit_codes(prediction, tmp_path, capsys):
    out = str(tmp_path / "t.geojson")
    rc = main(["export", prediction, out, "--json", "--quiet"])
    res = _last_json(capsys.readouterr().out)
    assert rc == 0 and res["out"] == out
    assert res["features"] == 2 and res["holes"] == 1 and res["working_downsample"] == 4.0
    back = load_mask(out, (200, 320)).read_window(0, 200, 0, 320, 4)
    assert int(back.sum()) == 20 * 20 - 25 + 10 * 35

    # An existing output is refused (exit 1, one line, file intact) unless --overwrite.
    before = open(out).read()
    rc = main(["export", prediction, out, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "already exists" in err and "--overwrite" in err
    assert "Traceback" not in err and open(out).read() == before
    rc = main(["export", prediction, out, "--overwrite", "--tolerance", "0", "--min-area", "0"])
    text = capsys.readouterr().out
    assert rc == 0 and "2 annotations" in text and "1 holes" in text

    rc = main(["export", prediction, out, "--overwrite", "--merge", "--json", "--quiet"])
    assert rc == 0 and _last_json(capsys.readouterr().out)["features"] == 1


def test_export_bad_input(prediction, tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing.zarr"), str(tmp_path / "o.geojson")]) == 1
    assert "no such prediction" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # a value the flag never takes: usage
        main(["export", prediction, str(tmp_path / "o.geojson"), "--tolerance", "-1"])
    assert exc.value.code == 2 and "--tolerance must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: usage error
        main(["export", prediction])
    assert exc.value.code == 2


def test_export_a_mask_file_needs_the_slide(tmp_path, capsys):
    from napari_gigapixel.core.synthetic import make_synthetic_slide

    slide, mask = make_synthetic_slide(
        tmp_path / "s.tif", shape=(256, 384), seed=1, mask_out=tmp_path / "m.tif", tile=128
    )
    out = str(tmp_path / "m.geojson")
    # The synthetic mask does not state its level: the slide must say how big level 0 is.
    assert main(["export", str(mask), out, "--quiet"]) == 1
    assert "--slide" in capsys.readouterr().err
    rc = main(
        ["export", str(mask), out, "--slide", str(slide), "--json", "--quiet", "--overwrite"]
    )
    res = _last_json(capsys.readouterr().out)
    assert rc == 0 and res["working_downsample"] == 1.0
    truth = load_mask(mask, (256, 384)).read_window(0, 256, 0, 384, 1) > 0
    back = load_mask(out, (256, 384)).read_window(0, 256, 0, 384, 1) > 0
    assert 2 * (truth & back).sum() / (truth.sum() + back.sum()) >= 0.99
