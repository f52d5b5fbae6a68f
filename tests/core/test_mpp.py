"""Microns per pixel: synthetic slides state it; every slide format's is read back."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_gigapixel.cli import main
from napari_gigapixel.core.slide import open_slide
from napari_gigapixel.core.synthetic import SyntheticError, make_synthetic_slide

SHAPE = (256, 384)


def _rgb(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (h, w, 3)).astype(np.uint8)


# -- synthetic slides ---------------------------------------------------------------------


def test_synthetic_slide_states_its_mpp_at_every_level(tmp_path):
    slide, mask = make_synthetic_slide(
        tmp_path / "a.ome.tif", shape=SHAPE, seed=1, tile=64, compression="deflate", mpp=0.25
    )
    with open_slide(slide) as s:
        assert s.mpp == pytest.approx((0.25, 0.25))
        assert s.metadata["format"] == "ome-tiff"
        assert len(s.levels) > 1
    with tifffile.TiffFile(slide) as tif:
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata
        # Resolution tags of level k say 0.25 * 2^k um per pixel (pixels per cm).
        for k, level in enumerate(tif.series[0].levels):
            xres = level.keyframe.tags["XResolution"].value
            assert 1e4 * xres[1] / xres[0] == pytest.approx(0.25 * 2**k)
            assert level.keyframe.resolutionunit == 3  # centimetre
    with tifffile.TiffFile(mask) as tif:
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata
    # The pixel size labels the pixels; the same seed draws the same tissue.
    default, _ = make_synthetic_slide(
        tmp_path / "b.ome.tif", shape=SHAPE, seed=1, tile=64, compression="deflate"
    )
    with open_slide(default) as s:
        assert s.mpp == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(tifffile.imread(slide), tifffile.imread(default))


@pytest.mark.parametrize("bad", [0.0, -1.0, 100.0, float("nan")])
def test_implausible_mpp_is_refused(tmp_path, bad):
    with pytest.raises(SyntheticError, match="mpp"):
        make_synthetic_slide(tmp_path / "x.tif", shape=SHAPE, mpp=bad)
    assert list(tmp_path.iterdir()) == []


def test_cli_sample_mpp(tmp_path, capsys):
    out = tmp_path / "s.ome.tif"
    rc = main(["sample", str(out), "--shape", "256x384", "--mpp", "2", "--quiet"])
    assert rc == 0
    with open_slide(out) as s:
        assert s.mpp == pytest.approx((2.0, 2.0))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # a value the flag never takes: usage
        main(["sample", str(tmp_path / "t.tif"), "--shape", "256x384", "--mpp", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--mpp must be" in err and not (tmp_path / "t.tif").exists()


def test_pyramid_cache_of_a_synthetic_slide_keeps_its_mpp(tmp_path):
    slide, _ = make_synthetic_slide(tmp_path / "s.ome.tif", shape=SHAPE, tile=64, mpp=0.25)
    assert main(["pyramid", slide, str(tmp_path / "s.zarr"), "--quiet"]) == 0
    with open_slide(tmp_path / "s.zarr") as s:
        assert s.metadata["format"].startswith("ome-zarr")
        assert s.mpp == pytest.approx((0.25, 0.25))


# -- scanner formats ----------------------------------------------------------------------


def test_svs_mpp_from_the_aperio_description(slide_fixtures):
    with open_slide(slide_fixtures / "small.svs") as s:
        assert s.metadata["format"] == "svs"
        assert s.mpp == pytest.approx((0.499, 0.499))


def test_ndpi_like_mpp_from_centimetre_resolution_tags(tmp_path):
    """Hamamatsu's layout: one page per level, NDPI tags, pixels per cm in the tags.

    tifffile cannot write NDPI's 64-bit-offset layout, which it assumes for any file
    named ``.ndpi``, so the file is a classic TIFF with NDPI's tags named ``.tif``.
    """
    data = _rgb(256, 384)
    path = tmp_path / "scan_ndpi.tif"
    with tifffile.TiffWriter(path) as tw:
        for k, (level, mag) in enumerate(((data, 20.0), (data[::2, ::2], 20.0), (data, -1.0))):
            ppcm = 1e4 / (0.4416 * 2 ** (k if mag > 0 else 3))
            tw.write(
                level if mag > 0 else level[::8, ::8],
                tile=(64, 64) if mag > 0 else None,
                photometric="rgb",
                compression="jpeg",
                resolution=(ppcm, ppcm),
                resolutionunit="CENTIMETER",
                extratags=[
                    (271, "s", 0, "Hamamatsu", True),  # Make
                    (65420, "I", 1, 1, True),  # NDPI file format
                    (65421, "f", 1, mag, True),  # magnification; -1 = macro image
                ],
            )
    with open_slide(path) as s:
        assert s.metadata["format"] == "ndpi"
        assert s.mpp == pytest.approx((0.4416, 0.4416))
        assert s.shape == (256, 384)


def test_ome_tiff_mpp_in_other_units(tmp_path):
    path = tmp_path / "nm.ome.tif"
    tifffile.imwrite(
        path,
        _rgb(128, 192),
        photometric="rgb",
        tile=(64, 64),
        metadata={
            "axes": "YXS",
            "PhysicalSizeX": 226.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.000226,
            "PhysicalSizeYUnit": "mm",
        },
    )
    with open_slide(path) as s:
        assert s.metadata["format"] == "ome-tiff"
        assert s.mpp == pytest.approx((0.226, 0.226))


def test_ome_zarr_mpp_from_scale_and_unit(tmp_path):
    import zarr

    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    data = _rgb(128, 192).transpose(2, 0, 1)  # c, y, x
    root.create_array("0", shape=data.shape, dtype="uint8", chunks=(3, 64, 64))[:] = data
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.3, 0.3]}],
                }
            ],
        }
    ]
    with open_slide(tmp_path / "img.ome.zarr") as s:
        assert s.mpp == pytest.approx((0.3, 0.3))


def test_openslide_mpp_svs_and_generic_tiff(slide_fixtures, tmp_path):
    pytest.importorskip("openslide")
    from napari_gigapixel.core._slide_formats import open_openslide

    with open_openslide(str(slide_fixtures / "small.svs")) as s:
        assert s.mpp == pytest.approx((0.499, 0.499))
    path = tmp_path / "generic.tif"
    tifffile.imwrite(
        path,
        _rgb(128, 192),
        tile=(64, 64),
        photometric="rgb",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    with open_openslide(str(path)) as a, open_slide(path) as b:
        assert a.mpp == pytest.approx((0.25, 0.25)) == b.mpp
