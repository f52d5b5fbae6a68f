"""Synthetic slides: deterministic, window-consistent, pyramidal, aligned with their mask."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest
import tifffile

from napari_gigapixel.cli import main as cli_main
from napari_gigapixel.core.events import Finished, JobStopped, Progress
from napari_gigapixel.core.synthetic import (
    MPP,
    SyntheticError,
    default_mask_path,
    iter_make_synthetic_slide,
    make_synthetic_slide,
    parse_shape,
    sample_slide_paths,
    synthetic_region,
)

SHAPE = (600, 1100)  # odd tile counts at 256 px: edge tiles and odd level sizes


def test_region_is_deterministic_and_depends_on_the_seed():
    a_rgb, a_mask = synthetic_region(SHAPE, 5, 100, 400, 200, 900)
    b_rgb, b_mask = synthetic_region(SHAPE, 5, 100, 400, 200, 900)
    c_rgb, _ = synthetic_region(SHAPE, 6, 100, 400, 200, 900)
    assert a_rgb.shape == (300, 700, 3) and a_rgb.dtype == np.uint8
    assert a_mask.shape == (300, 700) and a_mask.dtype == np.uint8
    np.testing.assert_array_equal(a_rgb, b_rgb)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert np.abs(a_rgb.astype(int) - c_rgb).mean() > 5


def test_any_window_equals_the_same_part_of_a_larger_window():
    # Crosses the fine textures' 2048 px period and unaligned grid cells.
    shape = (3000, 5000)
    big_rgb, big_mask = synthetic_region(shape, 2, 1000, 1400, 1900, 2300)
    small_rgb, small_mask = synthetic_region(shape, 2, 1037, 1211, 2011, 2149)
    np.testing.assert_array_equal(small_rgb, big_rgb[37:211, 111:249])
    np.testing.assert_array_equal(small_mask, big_mask[37:211, 111:249])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_covers_a_plausible_fraction_and_is_darker_and_pinker(seed):
    rgb, mask = synthetic_region((1024, 4096), seed, 0, 1024, 0, 4096)
    assert set(np.unique(mask)) <= {0, 1}
    assert 0.25 <= mask.mean() <= 0.65
    tissue = rgb[mask == 1].astype(float).mean(axis=0)
    glass = rgb[mask == 0].astype(float).mean(axis=0)
    assert tissue.mean() < glass.mean() - 10  # darker
    # Eosin absorbs green: tissue is pinker (R - G larger) than glass.
    assert tissue[0] - tissue[1] > glass[0] - glass[1] + 20


def test_otsu_on_grey_levels_is_fooled_but_not_hopeless():
    from skimage.filters import threshold_otsu

    rgb, mask = synthetic_region((1024, 4096), 0, 0, 1024, 0, 4096)
    grey = rgb.mean(axis=-1)
    otsu = grey < threshold_otsu(grey)
    dice = 2 * (otsu & (mask > 0)).sum() / (otsu.sum() + mask.sum())
    assert 0.5 < dice < 0.95


def test_lossless_slide_holds_exactly_the_region_pixels_and_a_pyramid(tmp_path):
    slide, mask = make_synthetic_slide(
        tmp_path / "s.tif", shape=SHAPE, seed=3, compression="deflate", tile=256
    )
    assert mask == str(tmp_path / "s_mask.tif")
    rgb, truth = synthetic_region(SHAPE, 3, 0, SHAPE[0], 0, SHAPE[1])
    with tifffile.TiffFile(slide) as tf:
        series = tf.series[0]
        assert [lv.shape for lv in series.levels] == [
            (600, 1100, 3),
            (300, 550, 3),
            (150, 275, 3),
            (75, 138, 3),  # halves until the longer side fits one tile
        ]
        np.testing.assert_array_equal(series.levels[0].asarray(), rgb)
        level1 = series.levels[1].asarray()
        page = tf.pages[0]
        assert page.tilewidth == 256
        xres = page.tags["XResolution"].value
        assert xres[0] / xres[1] == pytest.approx(1e4 / MPP)
    # Level 1 is the rounded 2x2 mean of level 0 (made from it, not regenerated).
    expect = (rgb.reshape(300, 2, 550, 2, 3).astype(int).sum(axis=(1, 3)) + 2) // 4
    np.testing.assert_array_equal(level1, expect)
    with tifffile.TiffFile(mask) as tf:
        levels = tf.series[0].levels
        assert [lv.shape for lv in levels] == [(600, 1100), (300, 550), (150, 275), (75, 138)]
        np.testing.assert_array_equal(levels[0].asarray(), truth)
        assert tf.pages[0].compression != 1


def test_jpeg_slide_3000x5000_is_written_in_bounded_memory(tmp_path):
    shape = (3000, 5000)
    synthetic_region(shape, 1, 0, 64, 0, 64)  # build the cached scene outside the measure
    tracemalloc.start()
    try:
        slide, mask = make_synthetic_slide(tmp_path / "big.ome.tif", shape=shape, seed=1, tile=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Whole-image generation would hold level 0 (45 MB) plus float planes
    # (4x that); tile by tile it stays near 20 MB (tiles in flight, batches).
    level0_bytes = shape[0] * shape[1] * 3
    assert peak < level0_bytes, f"peak {peak / 1e6:.1f} MB: not tile by tile"
    assert mask.endswith("big_mask.ome.tif")
    with tifffile.TiffFile(slide) as tf:
        series = tf.series[0]
        assert series.levels[0].shape == (3000, 5000, 3)
        assert len(series.levels) == 6
        assert tf.pages[0].photometric == tifffile.PHOTOMETRIC.YCBCR
        window = series.levels[0].asarray()[1200:1712, 2000:2512].astype(float)
        smallest = series.levels[-1].asarray()
    assert smallest.shape == (94, 157, 3)
    ref, _ = synthetic_region(shape, 1, 1200, 1712, 2000, 2512)
    mse = ((window - ref) ** 2).mean()
    assert 10 * np.log10(255**2 / max(mse, 1e-9)) > 30  # JPEG ~88, not another image


def test_progress_events_count_every_tile_and_end_with_finished(tmp_path):
    events = list(
        iter_make_synthetic_slide(tmp_path / "p.tif", shape=(512, 4096), seed=0, tile=256)
    )
    assert isinstance(events[-1], Finished)
    assert events[-1].result["slide"] == str(tmp_path / "p.tif")
    progress = [e for e in events if isinstance(e, Progress)]
    # Level tiles: 2x16 + 1x8 + 1x4 + 1x2 + 1x1 = 47 per file, two files.
    assert progress[-1].done == progress[-1].total == 94
    assert [e.stage for e in progress][0] == "slide" and progress[-1].stage == "mask"
    assert all(a.done < b.done for a, b in zip(progress, progress[1:]))


def test_stop_flag_removes_everything(tmp_path):
    stop = threading.Event()
    seen = []

    def progress(event):
        seen.append(event)
        stop.set()

    with pytest.raises(JobStopped):
        make_synthetic_slide(
            tmp_path / "s.tif", shape=(1024, 4096), tile=128, progress=progress, stop=stop
        )
    assert seen
    assert os.listdir(tmp_path) == []


def test_existing_pair_is_kept_when_a_run_is_stopped(tmp_path):
    slide, mask = make_synthetic_slide(tmp_path / "s.tif", shape=(256, 256), seed=1)
    before = open(slide, "rb").read(), open(mask, "rb").read()
    stop = threading.Event()
    stop.set()
    with pytest.raises(JobStopped):
        make_synthetic_slide(tmp_path / "s.tif", shape=(512, 512), seed=2, stop=stop)
    assert (open(slide, "rb").read(), open(mask, "rb").read()) == before
    assert sorted(os.listdir(tmp_path)) == ["s.tif", "s_mask.tif"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (10, 100)}, "too small"),
        ({"shape": "big"}, "height, width"),
        ({"compression": "lzw"}, "compression"),
        ({"tile": 100}, "multiple of 16"),
        ({"mask_out": "same"}, "different paths"),
    ],
)
def test_bad_arguments_raise_synthetic_error(tmp_path, kwargs, match):
    if kwargs.get("mask_out") == "same":
        kwargs["mask_out"] = tmp_path / "s.tif"
    with pytest.raises(SyntheticError, match=match):
        make_synthetic_slide(tmp_path / "s.tif", **{"shape": (256, 256), **kwargs})


def test_missing_folder_and_bad_window_are_named(tmp_path):
    with pytest.raises(SyntheticError, match="does not exist"):
        make_synthetic_slide(tmp_path / "nope" / "s.tif", shape=(256, 256))
    with pytest.raises(SyntheticError, match="outside"):
        synthetic_region((256, 256), 0, 0, 300, 0, 10)


def test_parse_shape_and_default_mask_path():
    assert parse_shape("16000x64000") == (16000, 64000)
    assert parse_shape(" 512 X 1024 ") == (512, 1024)
    for bad in ("16000", "axb", "1x2x3", "-5x100"):
        with pytest.raises(SyntheticError):
            parse_shape(bad)
    assert default_mask_path("/d/a.ome.tif").name == "a_mask.ome.tif"
    assert default_mask_path("/d/a.tiff").name == "a_mask.tiff"


def test_sample_is_made_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_GIGAPIXEL_CACHE", str(tmp_path / "cache"))
    slide, mask = sample_slide_paths(shape=(256, 512), seed=4)
    assert os.path.dirname(slide) == str(tmp_path / "cache")
    stamp = os.stat(slide).st_mtime_ns, os.stat(mask).st_mtime_ns
    assert sample_slide_paths(shape=(256, 512), seed=4) == (slide, mask)
    assert (os.stat(slide).st_mtime_ns, os.stat(mask).st_mtime_ns) == stamp
    other, _ = sample_slide_paths(tmp_path / "elsewhere", shape=(256, 512), seed=4)
    assert os.path.dirname(other) == str(tmp_path / "elsewhere")


def test_cli_sample_writes_refuses_overwrite_and_rejects_bad_shape(tmp_path, capsys):
    out = str(tmp_path / "c.tif")
    args = ["sample", out, "--shape", "256x512", "--seed", "2", "--quiet"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [out, str(tmp_path / "c_mask.tif")]
    assert cli_main(args) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite", "--compression", "zstd"]) == 0
    assert cli_main(["sample", str(tmp_path / "d.tif"), "--shape", "12by5"]) == 2
    assert "HEIGHTxWIDTH" in capsys.readouterr().err
    assert not (tmp_path / "d.tif").exists()


def test_importing_synthetic_and_mask_io_loads_neither_tensorflow_nor_qt():
    code = (
        "import sys; import napari_gigapixel.core.synthetic, napari_gigapixel.core.mask_io;"
        "import napari_gigapixel._writer;"
        "mods = ('tensorflow', 'keras', 'qtpy', 'PyQt6', 'napari');"
        "bad = [m for m in mods if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
