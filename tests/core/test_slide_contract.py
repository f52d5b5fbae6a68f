"""Slides mean what they say: 4 channels, OME-Zarr axes, closed handles (issue 10, item 3)."""

from __future__ import annotations

import gc

import numpy as np
import psutil
import pytest
import tifffile
import zarr

from napari_gigapixel.core.slide import NotASlideError, SlideError, open_slide


def _rgba(h=64, w=80) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 4), dtype=np.uint8)


@pytest.mark.parametrize(
    ("kwargs", "why"),
    [
        ({"photometric": "separated"}, "SEPARATED \\(CMYK\\)"),
        ({"photometric": "rgb", "extrasamples": ["unspecified"]}, "ExtraSamples 0"),
    ],
)
def test_four_channel_tiffs_are_rgba_only_when_the_file_says_so(tmp_path, kwargs, why):
    path = tmp_path / "four.tif"
    tifffile.imwrite(path, _rgba(), **kwargs)
    with pytest.raises(NotASlideError, match=f"4 channels and the TIFF says .*{why}"):
        open_slide(path)
    tifffile.imwrite(path, _rgba(), photometric="rgb", extrasamples=["assocalpha"])
    with open_slide(path) as s:
        assert s.metadata["alpha_dropped"] is True
        np.testing.assert_array_equal(s.levels[0].compute(), _rgba()[..., :3])


def _ome_zarr(path, data_cyx, axes, channels=None):
    root = zarr.open_group(path, mode="w", zarr_format=2)
    arr = root.create_array("0", shape=data_cyx.shape, chunks=data_cyx.shape, dtype="u1")
    arr[:] = data_cyx
    root.attrs["multiscales"] = [
        {"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]},
    ]
    if channels is not None:
        root.attrs["omero"] = {"channels": [{"label": c} for c in channels]}


def test_four_channel_ome_zarr_needs_rgba_channel_names(tmp_path):
    data = np.moveaxis(_rgba(), 2, 0)
    axes = [{"name": "c", "type": "channel"}, {"name": "y"}, {"name": "x"}]
    _ome_zarr(tmp_path / "fluo.ome.zarr", data, axes, ["DAPI", "FITC", "TRITC", "Cy5"])
    with pytest.raises(NotASlideError, match="4 channels and the omero channels are labelled"):
        open_slide(tmp_path / "fluo.ome.zarr")
    _ome_zarr(tmp_path / "bare.ome.zarr", data, axes)
    with pytest.raises(NotASlideError, match="omero names no channels"):
        open_slide(tmp_path / "bare.ome.zarr")
    _ome_zarr(tmp_path / "rgba.ome.zarr", data, axes, ["R", "G", "B", "alpha"])
    with open_slide(tmp_path / "rgba.ome.zarr") as s:
        np.testing.assert_array_equal(s.levels[0].compute(), _rgba()[..., :3])


def test_plain_four_channel_zarr_array_is_not_taken_as_rgba(tmp_path):
    zarr.save_array(str(tmp_path / "a.zarr"), _rgba(), zarr_format=2)
    with pytest.raises(NotASlideError, match="4 channels and a plain zarr array"):
        open_slide(tmp_path / "a.zarr")


@pytest.mark.parametrize(
    "axes",
    [
        [{"name": "c", "type": "channel"}, {"name": "row"}, {"name": "col"}],
        [{"name": "c"}, {"name": "y"}, {"name": "y"}],
        [{"name": "c"}, {"name": "z"}, {"name": "x"}],
    ],
)
def test_ome_zarr_without_y_and_x_axes_is_a_clear_slide_error(tmp_path, axes):
    _ome_zarr(tmp_path / "odd.ome.zarr", np.zeros((3, 32, 32), np.uint8), axes)
    with pytest.raises(SlideError, match="do not name both a 'y' and an 'x' axis"):
        open_slide(tmp_path / "odd.ome.zarr")


def _open_fds() -> int:
    proc = psutil.Process()
    return proc.num_fds() if hasattr(proc, "num_fds") else len(proc.open_files())


@pytest.mark.slow  # ~20 s on 2 shared cores: 1,000 opens
def test_open_and_close_1000_times_leaks_no_file_handles(tmp_path):
    data = _rgba(96, 128)[..., :3]
    paths = [tmp_path / "tiled.tif", tmp_path / "strips.tif", tmp_path / "s.zarr"]
    tifffile.imwrite(paths[0], data, photometric="rgb", tile=(64, 64), compression="zlib")
    tifffile.imwrite(paths[1], data, photometric="rgb")  # uncompressed: memory mapped
    zarr.save_array(str(paths[2]), data, zarr_format=2)
    for path in paths:  # warm up: imports and thread pools open their own handles once
        with open_slide(path) as s:
            s.levels[0][:8, :8].compute(scheduler="sync")
    gc.collect()
    before = _open_fds()
    for i in range(1000):  # open_slide decodes one tile of every file it opens
        with open_slide(paths[i % 3]):
            pass
    gc.collect()
    assert _open_fds() - before <= 1
    # Without closing, the handles would pile up: the count above can fail.
    kept = [open_slide(paths[0]) for _ in range(20)]
    assert _open_fds() - before >= 20
    for s in kept:
        s.close()
