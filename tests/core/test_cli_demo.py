"""The README's main job, ``napari-gigapixel demo``, end to end on a tiny slide."""

from __future__ import annotations

import json

import imagecodecs
import pytest

from napari_gigapixel.cli import main


@pytest.mark.slow
def test_demo_trains_predicts_evaluates_and_writes_an_overview(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_GIGAPIXEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    out = tmp_path / "demo"
    argv = ["demo", "--shape", "512x1024", "--steps", "3", "--out-dir", str(out), "--json"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["steps"] == 3
    for key in ("dice", "iou", "precision", "recall", "otsu_dice"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert "Otsu baseline Dice" in printed
    assert "No display" in printed  # says so instead of failing
    assert (out / "model.keras").is_file()
    assert (out / "heldout_prediction.zarr").is_dir()
    png = imagecodecs.png_decode((out / "overview.png").read_bytes())
    assert png.shape == (512, 1024, 3)  # the held-out slide's own size: small enough
    assert not any(p.name.endswith(".partial") for p in out.iterdir())


def test_demo_refuses_a_bad_shape(capsys):
    assert main(["demo", "--shape", "tiny"]) == 2
    assert "--shape must look like 4096x16384" in capsys.readouterr().err
