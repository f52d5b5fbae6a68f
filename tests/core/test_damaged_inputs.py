"""Damaged files and mismatched inputs: one line naming the file and the fix, never a traceback.

A lazy mask or prediction decodes its pixels only when a window is read, so a
damaged tile fails deep inside a count or a trace; these tests damage real
files the way a broken copy does and check what ``evaluate``, ``export`` and
the mask reader say.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_gigapixel.cli import main
from napari_gigapixel.core.mask_io import load_mask
from napari_gigapixel.core.masks import MaskError, infer_downsample

SLIDE = (200, 320)


@pytest.fixture
def prediction(prediction_writer) -> str:
    """A 1/4 prediction of a 200 x 320 slide (a square of tissue)."""
    truth = np.zeros(SLIDE, np.uint8)
    truth[20:100, 20:100] = 1
    return prediction_writer(truth, 4, "p")


@pytest.fixture
def damaged_mask(tmp_path) -> Path:
    """A tiled, deflate-compressed level-0 mask whose first tile's bytes are garbage."""
    rng = np.random.default_rng(0)
    labels = (rng.random(SLIDE) > 0.5).astype(np.uint8)
    path = tmp_path / "damaged_mask.tif"
    tifffile.imwrite(path, labels, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    with open(path, "r+b") as f:  # what a broken copy leaves: the header intact
        f.seek(offset)
        f.write(b"\xff" * count)
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_a_damaged_mask_is_one_line_in_evaluate_and_export(
    prediction, damaged_mask, tmp_path, capsys
):
    assert main(["evaluate", "--pred", prediction, "--truth", str(damaged_mask)]) == 1
    err = _one_line_error(capsys)  # tifffile's own log lines are not shown either
    assert "damaged_mask.tif: cannot read the mask's pixels" in err and "again" in err
    slide = tmp_path / "s.tif"
    tifffile.imwrite(slide, np.full((*SLIDE, 3), 240, np.uint8), photometric="rgb")
    out = tmp_path / "m.geojson"
    assert main(["export", str(damaged_mask), str(out), "--slide", str(slide)]) == 1
    assert "cannot read the mask's pixels" in _one_line_error(capsys)
    assert not out.exists()


def test_the_mask_reader_says_which_file(damaged_mask):
    mask = load_mask(damaged_mask, SLIDE)
    with pytest.raises(MaskError, match="damaged_mask.tif: cannot read the mask's pixels"):
        mask.read_window(0, 64, 0, 64)


def test_a_prediction_folder_missing_its_mask_group(prediction, tmp_path, capsys):
    shutil.rmtree(Path(prediction) / "labels")
    truth = tmp_path / "t.tif"
    tifffile.imwrite(truth, np.ones(SLIDE, np.uint8))
    assert main(["evaluate", "--pred", prediction, "--truth", str(truth)]) == 1
    err = _one_line_error(capsys)
    assert "cannot read the prediction's probability and mask arrays" in err
    assert "run 'napari-gigapixel predict' again" in err
    assert main(["export", prediction, str(tmp_path / "o.geojson")]) == 1
    assert "probability and mask arrays" in _one_line_error(capsys)


def test_a_damaged_prediction_chunk(prediction, tmp_path, capsys):
    chunk = next(p for p in (Path(prediction) / "labels" / "mask" / "0").iterdir())
    chunk.write_bytes(b"not a blosc chunk")
    truth = tmp_path / "t.tif"
    tifffile.imwrite(truth, np.ones(SLIDE, np.uint8))
    assert main(["evaluate", "--pred", prediction, "--truth", str(truth)]) == 1
    assert "cannot read the prediction's pixels" in _one_line_error(capsys)
    assert main(["export", prediction, str(tmp_path / "o.geojson")]) == 1
    assert "cannot read the prediction's pixels" in _one_line_error(capsys)


def test_export_refuses_what_cannot_apply_to_a_prediction(prediction, tmp_path, capsys):
    out = tmp_path / "o.geojson"
    assert main(["export", prediction, str(out), "--kind", "scribble"]) == 1
    assert "a prediction is a dense tissue mask" in _one_line_error(capsys)
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.full((64, 96, 3), 240, np.uint8), photometric="rgb")
    assert main(["export", prediction, str(out), "--slide", str(other)]) == 1
    err = _one_line_error(capsys)
    assert "predicted on a 200 x 320 px slide, not the 64 x 96 px one" in err
    assert not out.exists()
    # The slide it was made on is fine.
    right = tmp_path / "right.tif"
    tifffile.imwrite(right, np.full((*SLIDE, 3), 240, np.uint8), photometric="rgb")
    assert main(["export", prediction, str(out), "--slide", str(right), "--quiet"]) == 0


def test_evaluate_refuses_another_slide_for_the_baseline(prediction, tmp_path, capsys):
    truth = tmp_path / "t.tif"
    tifffile.imwrite(truth, np.ones(SLIDE, np.uint8))
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, np.full((64, 96, 3), 240, np.uint8), photometric="rgb")
    argv = ["evaluate", "--pred", prediction, "--truth", str(truth), "--image", str(other)]
    assert main(argv) == 1
    assert "a 64 x 96 px slide, but" in _one_line_error(capsys)
    # Without --image the prediction's own recorded slide is used (here: none on disk).
    assert main(["evaluate", "--pred", prediction, "--truth", str(truth), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["dice"] > 0


def test_export_says_an_unreadable_mask_is_unreadable(tmp_path, capsys):
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    assert main(["export", str(text), str(tmp_path / "o.geojson")]) == 1
    err = _one_line_error(capsys)
    assert "cannot read this TIFF" in err and "--slide" not in err


def test_a_mask_larger_than_the_slide_says_so():
    with pytest.raises(MaskError, match="larger than the 1024 x 4096 slide"):
        infer_downsample((2048, 8192), (1024, 4096), name="big.tif")
    with pytest.raises(MaskError, match="cannot overlay"):  # ratios that disagree
        infer_downsample((512, 4096), (1024, 4096), name="odd.tif")


def test_train_refuses_a_damaged_mask_in_preflight(damaged_mask, tmp_path, capsys):
    slide = tmp_path / "s.tif"
    tifffile.imwrite(slide, np.full((*SLIDE, 3), 240, np.uint8), photometric="rgb")
    out = tmp_path / "m.keras"
    argv = ["train", "--image", str(slide), "--mask", str(damaged_mask), "--out", str(out)]
    assert main(argv) == 1
    assert "cannot read the mask's pixels" in _one_line_error(capsys)
    assert not out.exists()
