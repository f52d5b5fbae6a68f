"""Opening slides as lazy multiscale dask arrays (core/slide.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pytest
import tifffile
import zarr

from napari_gigapixel.core import slide_base as slide_mod
from napari_gigapixel.core.slide import (
    NotASlideError,
    SlideError,
    is_slide_path,
    open_slide,
    read_region,
)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth image with some noise: compresses fast, every pixel distinct enough."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = np.stack([(yy * 7 + xx) % 256, (xx * 3) % 256, (yy + 2 * xx) % 251], axis=-1)
    img = img + rng.integers(0, 4, size=img.shape)
    return (img % 256).astype(np.uint8)


def _corrupt_tile(path: Path, page: int, tile: int) -> None:
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[page].dataoffsets[tile]
        count = tif.pages[page].databytecounts[tile]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x13\x37" * (count // 2))


@pytest.fixture(scope="module")
def big_tiff(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 2000 x 3000 single-level tiled (512) deflate TIFF."""
    data = _rgb(2000, 3000, seed=1)
    path = tmp_path_factory.mktemp("big") / "big.tif"
    tifffile.imwrite(
        path,
        data,
        tile=(512, 512),
        compression="zlib",
        compressionargs={"level": 1},
        photometric="rgb",
    )
    return path, data


# -- real files from OpenSlide's test suite ------------------------------------------


def test_boxes_pyramidal_tiff_levels_and_pixels(slide_fixtures):
    path = slide_fixtures / "boxes.tiff"
    s = open_slide(path)
    assert [lvl.shape for lvl in s.levels] == [
        (250, 300, 3),
        (125, 150, 3),
        (62, 75, 3),
        (31, 37, 3),
    ]
    assert all(lvl.dtype == np.uint8 for lvl in s.levels)
    assert s.shape == (250, 300)
    assert s.downsamples == [1.0, 2.0, 4.0, 8.0]
    assert s.name == "boxes"
    # 28.3 pixels/cm is an editor's 72 dpi default, not a microscope's pixel size.
    assert s.mpp is None
    assert s.metadata["format"] == "tiff"
    assert s.metadata["tile"] == [64, 64]
    with tifffile.TiffFile(path) as tif:
        for k, level in enumerate(tif.series[0].levels):
            np.testing.assert_array_equal(s.levels[k].compute(), level.asarray())
        expected = tif.series[0].levels[0].asarray()[40:90, 100:260]
    np.testing.assert_array_equal(read_region(s, 40, 90, 100, 260), expected)
    s.close()


def test_svs_picks_the_baseline_series_and_reads_mpp(slide_fixtures):
    path = slide_fixtures / "small.svs"
    with open_slide(path) as s:
        assert s.shape == (16, 16)
        assert len(s.levels) == 1
        assert s.mpp == pytest.approx((0.499, 0.499))
        assert s.metadata["format"] == "svs"
        assert s.metadata["series_name"] == "Baseline"
        assert s.metadata["n_series"] == 2  # baseline + thumbnail
        with tifffile.TiffFile(path) as tif:
            np.testing.assert_array_equal(s.levels[0].compute(), tif.series[0].asarray())


@pytest.mark.parametrize("name", ["boxes.tiff", "small.svs"])
def test_openslide_backend_matches_tifffile(name, slide_fixtures):
    from napari_gigapixel.core._slide_formats import open_openslide

    path = str(slide_fixtures / name)
    with open_openslide(path) as a, open_slide(path) as b:
        assert a.metadata["format"].startswith("openslide:")
        assert [lvl.shape for lvl in a.levels] == [lvl.shape for lvl in b.levels]
        assert a.mpp == b.mpp
        np.testing.assert_array_equal(a.levels[0].compute(), b.levels[0].compute())
        np.testing.assert_array_equal(a.levels[-1][5:20, 3:30].compute(), b.levels[-1][5:20, 3:30])


# -- files written here -----------------------------------------------------------------


def test_ome_tiff_pyramid_with_physical_sizes(tmp_path):
    data = _rgb(300, 400)
    path = tmp_path / "phys.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(
            data,
            tile=(64, 64),
            photometric="rgb",
            subifds=1,
            metadata={
                "axes": "YXS",
                "PhysicalSizeX": 250.0,
                "PhysicalSizeXUnit": "nm",
                "PhysicalSizeY": 0.5,
                "PhysicalSizeYUnit": "µm",
            },
        )
        tw.write(data[::2, ::2], tile=(64, 64), photometric="rgb", subfiletype=1)
    with open_slide(path) as s:
        assert s.name == "phys"
        assert s.metadata["format"] == "ome-tiff"
        assert s.mpp == pytest.approx((0.5, 0.25))
        assert [lvl.shape for lvl in s.levels] == [(300, 400, 3), (150, 200, 3)]
        np.testing.assert_array_equal(s.levels[1].compute(), data[::2, ::2])


def test_resolution_tags_in_centimetres_give_mpp(tmp_path):
    path = tmp_path / "res.tif"
    tifffile.imwrite(
        path, _rgb(64, 64), photometric="rgb", resolution=(40000.0, 20000.0),
        resolutionunit="CENTIMETER",
    )  # fmt: skip
    with open_slide(path) as s:
        # 40,000 px/cm along x = 0.25 um; 20,000 px/cm along y = 0.5 um.
        assert s.mpp == pytest.approx((0.5, 0.25))


def test_rgba_drops_alpha(tmp_path):
    rgba = np.concatenate([_rgb(100, 120), np.full((100, 120, 1), 7, np.uint8)], axis=-1)
    path = tmp_path / "rgba.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(64, 64))
    with open_slide(path) as s:
        assert s.levels[0].shape == (100, 120, 3)
        assert s.metadata["alpha_dropped"] is True
        np.testing.assert_array_equal(s.levels[0].compute(), rgba[..., :3])


def test_grayscale_is_expanded_to_rgb(tmp_path):
    gray = _rgb(90, 70)[..., 0]
    path = tmp_path / "gray.tif"
    tifffile.imwrite(path, gray, tile=(32, 32), compression="zlib")
    with open_slide(path) as s:
        assert s.metadata["grayscale"] is True
        out = s.levels[0].compute()
        assert out.shape == (90, 70, 3)
        for c in range(3):
            np.testing.assert_array_equal(out[..., c], gray)


def test_planar_rgb_is_transposed_lazily(tmp_path):
    data = _rgb(80, 96)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(data, 2, 0), photometric="rgb", planarconfig="separate")
    with open_slide(path) as s:
        assert s.levels[0].chunks[2] == (3,)
        np.testing.assert_array_equal(s.levels[0].compute(), data)


def test_uncompressed_strip_tiff_is_memory_mapped(tmp_path):
    data = _rgb(150, 170)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, data, photometric="rgb")  # contiguous, uncompressed
    with open_slide(path) as s:
        np.testing.assert_array_equal(read_region(s, 10, 140, 5, 160), data[10:140, 5:160])


@pytest.mark.parametrize(
    ("data", "kwargs", "why"),
    [
        (np.zeros((40, 50, 3), np.uint16), {"photometric": "rgb"}, "8-bit"),
        (np.zeros((4, 40, 50), np.uint8), {"photometric": "minisblack"}, "length 4"),
        (np.zeros((40, 50, 6), np.uint8), {"planarconfig": "contig"}, "6 channels"),
    ],
)
def test_tiffs_that_are_not_rgb_slides_say_why(tmp_path, data, kwargs, why):
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, data, **kwargs)
    with pytest.raises(NotASlideError, match=why) as info:
        open_slide(path)
    assert str(path) in str(info.value)


def test_text_file_is_not_a_slide(tmp_path):
    for name in ("notes.txt", "fake.tif"):
        path = tmp_path / name
        path.write_text("hello, not an image\n")
        assert not is_slide_path(path)
        with pytest.raises(NotASlideError, match=name):
            open_slide(path)


def test_missing_file_and_truncated_tiff_are_slide_errors(tmp_path):
    with pytest.raises(SlideError, match="no such file") as info:
        open_slide(tmp_path / "nope.svs")
    assert not isinstance(info.value, NotASlideError)
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _rgb(64, 64), tile=(32, 32), compression="zlib")
    path.write_bytes(path.read_bytes()[:12])
    with pytest.raises(SlideError, match="cut.tif") as info:
        open_slide(path)
    assert not isinstance(info.value, NotASlideError)


def test_corrupt_tile_fails_at_open(tmp_path):
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, _rgb(128, 128), tile=(64, 64), compression="zlib", photometric="rgb")
    _corrupt_tile(path, page=0, tile=0)
    with pytest.raises(SlideError, match="corrupt.tif.*cannot decode") as info:
        open_slide(path)
    assert not isinstance(info.value, NotASlideError)


def test_corrupt_level0_tile_fails_on_read_with_the_file_name(tmp_path):
    data = _rgb(2048, 1024)
    path = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(path) as tw:
        opts = {"tile": (256, 256), "compression": "zlib", "photometric": "rgb"}
        tw.write(data, subifds=1, **opts)
        tw.write(data[::2, ::2], subfiletype=1, **opts)
    _corrupt_tile(path, page=0, tile=31)  # bottom-right tile of level 0
    with open_slide(path) as s:  # the smallest level decodes: opening works
        np.testing.assert_array_equal(read_region(s, 0, 64, 0, 64), data[:64, :64])
        with pytest.raises(SlideError, match="pyr.tif: cannot decode series 0 level 0"):
            read_region(s, 2000, 2048, 1000, 1024)


def test_single_level_tiff_gets_a_lazy_pyramid(big_tiff):
    path, data = big_tiff
    with open_slide(path) as s:
        assert s.metadata["stored_levels"] == 1
        assert [lvl.shape for lvl in s.levels] == [
            (2000, 3000, 3),
            (1000, 1500, 3),
            (500, 750, 3),
        ]
        assert s.downsamples == [1.0, 2.0, 4.0]
        expected = data[600:800, 1000:1400].reshape(100, 2, 200, 2, 3).astype(np.float64)
        expected = np.floor(expected.mean(axis=(1, 3)) + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(s.levels[1][300:400, 500:700].compute(), expected)


def test_pyramid_extension_stops_below_min_side(tmp_path, monkeypatch):
    monkeypatch.setattr(slide_mod, "MIN_LEVEL_SIDE", 100)
    path = tmp_path / "odd_size.tif"
    tifffile.imwrite(path, _rgb(401, 503), tile=(64, 64), photometric="rgb")
    with open_slide(path) as s:
        # pyramid_levels: ceil-half until the longer side is at most MIN_LEVEL_SIDE.
        shapes = [lvl.shape[:2] for lvl in s.levels]
        assert shapes == [(401, 503), (201, 252), (101, 126), (51, 63)]
        assert s.downsamples == [1.0, 2.0, 4.0, 8.0]
        assert s.levels[2].compute().dtype == np.uint8
        # The odd border row and column are the mean of the pixels that exist.
        data = _rgb(401, 503).astype(np.float64)
        last = s.levels[1][200, 251].compute()
        np.testing.assert_array_equal(last, np.floor(data[400, 502] + 0.5))
        edge = s.levels[1][200, 10].compute()
        np.testing.assert_array_equal(edge, np.floor(data[400, 20:22].mean(axis=0) + 0.5))


def test_lazy_open_reads_only_touched_tiles(big_tiff, monkeypatch):
    from tifffile.zarr import ZarrTiffStore

    path, data = big_tiff
    tiles_read: list[str] = []
    original = ZarrTiffStore.get

    async def counting_get(self, key, *args, **kwargs):
        if not key.rsplit("/", 1)[-1].startswith(".") and not key.endswith("zarr.json"):
            tiles_read.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counting_get)
    with open_slide(path) as s:
        level0 = s.levels[0]
        # the file's 512 px tiles, grouped 2 x 2 per dask chunk: never the whole level
        assert level0.chunksize == (1024, 1024, 3)
        assert level0[300:400, 300:400].npartitions == 1
        tiles_read.clear()
        np.testing.assert_array_equal(read_region(s, 300, 400, 300, 400), data[300:400, 300:400])
        assert 1 <= len(tiles_read) <= 4  # of 4 x 6 = 24 tiles in the file
        tiles_read.clear()
        read_region(s, 1900, 2000, 2900, 3000)  # in the last dask chunk: 2 x 2 edge tiles
        assert set(tiles_read) <= {"2.4.0", "2.5.0", "3.4.0", "3.5.0"}
        assert "3.5.0" in tiles_read


def test_threaded_full_read_matches_tifffile(big_tiff):
    path, data = big_tiff
    with open_slide(path) as s, dask.config.set(scheduler="threads", num_workers=4):
        np.testing.assert_array_equal(s.levels[0].compute(), data)


def test_read_region_outside_the_slide_is_an_error(big_tiff):
    with open_slide(big_tiff[0]) as s, pytest.raises(SlideError, match="outside"):
        read_region(s, -1, 10, 0, 10)


# -- zarr and OME-Zarr --------------------------------------------------------------------


def test_plain_zarr_arrays_yxc_and_cyx(tmp_path):
    data = _rgb(120, 90)
    a = zarr.create_array(tmp_path / "yxc.zarr", shape=data.shape, chunks=(64, 64, 3), dtype="u1")
    a[:] = data
    b = zarr.create_array(
        tmp_path / "cyx.zarr", shape=(3, 120, 90), chunks=(3, 32, 32), dtype="u1"
    )
    b[:] = np.moveaxis(data, 2, 0)
    for name in ("yxc.zarr", "cyx.zarr"):
        assert is_slide_path(tmp_path / name)
        with open_slide(tmp_path / name) as s:
            assert s.metadata["format"] == "zarr"
            assert s.mpp is None
            np.testing.assert_array_equal(s.levels[0].compute(), data)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_ome_zarr_multiscales_tczyx_with_units(tmp_path, zarr_format):
    data = _rgb(128, 160)
    path = tmp_path / "img.ome.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    levels = [data, data[::2, ::2]]
    for k, lvl in enumerate(levels):
        arr = root.create_array(
            str(k), shape=(1, 3, 1, *lvl.shape[:2]), chunks=(1, 3, 1, 64, 64), dtype="u1"
        )
        arr[:] = np.moveaxis(lvl, 2, 0)[None, :, None]
    axes = [
        {"name": "t", "type": "time"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "nanometer"},
    ]
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1, 1, 1, 0.5 * 2**k, 250.0 * 2**k]}
            ],
        }
        for k in range(2)
    ]
    ms = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    if zarr_format == 3:  # OME-NGFF v0.5 nests its metadata under "ome"
        root.attrs["ome"] = {"version": "0.5", "multiscales": ms}
    else:
        root.attrs["multiscales"] = ms
    with open_slide(path) as s:
        assert s.name == "img"
        assert s.metadata["format"] == "ome-zarr"
        assert s.mpp == pytest.approx((0.5, 0.25))
        assert s.downsamples == [1.0, 2.0]
        np.testing.assert_array_equal(s.levels[0].compute(), data)
        np.testing.assert_array_equal(s.levels[1].compute(), data[::2, ::2])


def test_zarr_group_without_image_and_plain_directory_are_not_slides(tmp_path):
    g = zarr.open_group(tmp_path / "group.zarr", mode="w")
    g.attrs["something"] = 1
    with pytest.raises(NotASlideError, match="multiscales"):
        open_slide(tmp_path / "group.zarr")
    (tmp_path / "folder").mkdir()
    assert not is_slide_path(tmp_path / "folder")
    with pytest.raises(NotASlideError, match="not a zarr store"):
        open_slide(tmp_path / "folder")


# -- OpenSlide missing --------------------------------------------------------------------


def test_openslide_format_without_openslide_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openslide", None)  # import openslide -> ImportError
    path = tmp_path / "slide.mrxs"
    path.write_bytes(b"[GENERAL]\n")
    assert is_slide_path(path)
    with pytest.raises(SlideError, match=r"pip install 'napari-gigapixel\[openslide\]'"):
        open_slide(path)


def test_import_loads_neither_tensorflow_nor_qt():
    code = (
        "import sys, napari_gigapixel.core.slide, napari_gigapixel.core.pyramid, "
        "napari_gigapixel._reader\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'qtpy', 'napari')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
