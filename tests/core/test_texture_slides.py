"""Slide families: real-texture slides are deterministic, window-consistent and labelled."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_gigapixel.cli import main as cli_main
from napari_gigapixel.core.synthetic import SyntheticError, synthetic_region
from napari_gigapixel.core.texture_slides import (
    FAMILIES,
    default_hard_path,
    family_region,
    make_family_slide,
)

SHAPE = (1024, 4096)


@pytest.mark.parametrize("family", ["ihc", "ihc-as-he"])
def test_region_is_deterministic_window_consistent_and_seeded(family):
    shape = (3000, 5000)
    big = family_region(family, shape, 2, 1000, 1400, 1900, 2300)
    again = family_region(family, shape, 2, 1000, 1400, 1900, 2300)
    # Unaligned with the quilting cells and the scene's grids.
    small = family_region(family, shape, 2, 1037, 1211, 2011, 2149)
    for a, b, s in zip(big, again, small):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(s, a[37:211, 111:249])
    other = family_region(family, shape, 3, 1000, 1400, 1900, 2300)[0]
    assert np.abs(big[0].astype(int) - other).mean() > 5


def test_synthetic_family_is_the_synthetic_slide_and_shapes_are_shared():
    rgb, mask, _ = family_region("synthetic-he", SHAPE, 1, 0, 512, 0, 2048)
    s_rgb, s_mask = synthetic_region(SHAPE, 1, 0, 512, 0, 2048)
    np.testing.assert_array_equal(rgb, s_rgb)
    np.testing.assert_array_equal(mask, s_mask)
    # Real-texture slides cut the same tissue shapes as the synthetic scene.
    np.testing.assert_array_equal(family_region("ihc", SHAPE, 1, 0, 512, 0, 2048)[1], mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ihc_tissue_is_brown_with_pale_stroma_and_hard_negatives_are_glass(seed):
    rgb, mask, hard = family_region("ihc", SHAPE, seed, 0, SHAPE[0], 0, SHAPE[1])
    assert 0.25 <= mask.mean() <= 0.65
    tissue = rgb[mask == 1].astype(float)
    glass = rgb[(mask == 0) & (hard == 0)].astype(float)
    assert tissue.mean() < glass.mean() - 15
    # DAB absorbs blue most: tissue is browner (R - B larger) than glass.
    assert (tissue[:, 0] - tissue[:, 2]).mean() > (glass[:, 0] - glass[:, 2]).mean() + 10
    # Pale stroma: a good share of tissue is nearly as bright as glass.
    assert (tissue.mean(axis=1) > glass.mean() - 40).mean() > 0.15
    # Hard negatives exist, are never tissue, and are visibly darker than glass.
    assert set(np.unique(hard)) <= {0, 1, 2, 3}
    assert not np.any(hard[mask == 1])
    assert (hard == 2).sum() > 100
    assert rgb[hard > 0].astype(float).mean() < glass.mean() - 10


def test_stain_shifts_between_slides():
    colours = []
    for seed in (0, 1, 2, 3):
        rgb, mask, _ = family_region("ihc", SHAPE, seed, 0, 512, 0, 4096)
        colours.append(rgb[mask == 1].astype(float).mean(axis=0))
    spread = np.ptp(np.array(colours), axis=0)
    assert spread.max() > 6


def test_written_files_match_the_regions(tmp_path):
    shape = (600, 1100)  # odd tile counts and level sizes
    res = make_family_slide(
        tmp_path / "s.ome.tif",
        "ihc-as-he",
        shape=shape,
        seed=4,
        hard_out=default_hard_path(tmp_path / "s.ome.tif"),
        compression="deflate",
        tile=256,
    )
    assert res["hard"] == str(tmp_path / "s_hard.ome.tif")
    rgb, mask, hard = family_region("ihc-as-he", shape, 4, 0, shape[0], 0, shape[1])
    np.testing.assert_array_equal(tifffile.imread(res["slide"]), rgb)
    np.testing.assert_array_equal(tifffile.imread(res["mask"]), mask)
    np.testing.assert_array_equal(tifffile.imread(res["hard"]), hard)
    with tifffile.TiffFile(res["hard"]) as tf:
        assert len(tf.series[0].levels) >= 2


def test_bad_family_is_named():
    with pytest.raises(SyntheticError, match="ihc"):
        family_region("he-real", SHAPE, 0, 0, 10, 0, 10)


def test_cli_sample_family_and_hard_negatives(tmp_path, capsys):
    out = str(tmp_path / "f.tif")
    args = ["sample", out, "--shape", "256x512", "--family", "ihc", "--quiet"]
    assert cli_main([*args, "--hard-out", str(tmp_path / "f_hard.tif")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [out, str(tmp_path / "f_mask.tif"), str(tmp_path / "f_hard.tif")]
    ihc = tifffile.imread(out)
    assert cli_main([*args, "--overwrite", "--family", "synthetic-he"]) == 0
    assert np.abs(tifffile.imread(out).astype(int) - ihc).mean() > 5
    with pytest.raises(SystemExit) as exc:
        cli_main([*args, "--family", "nope"])
    assert exc.value.code == 2
    assert set(FAMILIES) >= {"synthetic-he", "ihc"}
