"""OME-Zarr pyramid cache (core/pyramid.py) and the ``pyramid`` sub-command."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_gigapixel.cli import main
from napari_gigapixel.core.events import Finished, Progress
from napari_gigapixel.core.pyramid import PyramidError, build_pyramid, pyramid_shapes
from napari_gigapixel.core.slide import SlideError, open_slide

ROOT = Path(__file__).resolve().parents[2]
BOXES = ROOT / "tests" / "data" / "boxes.tiff"


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(yy * 5 + xx) % 256, (xx * 3 + yy) % 256, (2 * yy + xx) % 251], axis=-1)
    return ((img + rng.integers(0, 8, size=img.shape)) % 256).astype(np.uint8)


def _mean2(a: np.ndarray) -> np.ndarray:
    """Reference 2 x 2 mean: over the pixels that exist at an odd border, rounded half up."""
    h, w = a.shape[:2]
    f = np.full((h + h % 2, w + w % 2, *a.shape[2:]), np.nan)
    f[:h, :w] = a
    blocks = f.reshape(f.shape[0] // 2, 2, f.shape[1] // 2, 2, *a.shape[2:])
    return np.floor(np.nanmean(blocks, axis=(1, 3)) + 0.5).astype(a.dtype)


@pytest.fixture
def source(tmp_path) -> tuple[Path, np.ndarray]:
    """A 300 x 417 OME-TIFF with a 0.5 x 0.25 um pixel size."""
    data = _rgb(300, 417)
    path = tmp_path / "src.ome.tif"
    tifffile.imwrite(
        path,
        data,
        tile=(64, 64),
        photometric="rgb",
        compression="zlib",
        metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5},
    )
    return path, data


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n not in keep)


def test_pyramid_shapes_halve_until_min_size():
    # One rule for every pyramid (pyramid_levels): ceil-half until the longer side fits.
    assert pyramid_shapes((16000, 64000)) == [
        (16000, 64000),
        (8000, 32000),
        (4000, 16000),
        (2000, 8000),
        (1000, 4000),
        (500, 2000),
        (250, 1000),
    ]
    assert pyramid_shapes((300, 417), min_size=70) == [(300, 417), (150, 209), (75, 105), (38, 53)]


def test_round_trip_is_exact_and_valid_ome_ngff_v04(source, tmp_path):
    path, data = source
    out = tmp_path / "out.ome.zarr"
    events = list(build_pyramid(path, out, tile=64, min_size=70, workers=2))
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].done == progress[-1].total == 5 * 7 + 3 * 4 + 2 * 2 + 1
    finished = events[-1]
    assert isinstance(finished, Finished) and not finished.stopped
    assert finished.result["levels"] == 4
    assert finished.result["path"] == str(out)
    assert _leftovers(tmp_path, {"src.ome.tif", "out.ome.zarr"}) == []

    # zarr format 2 with OME-NGFF v0.4 metadata, (c, y, x) axes
    assert (out / ".zgroup").is_file()
    attrs = json.loads((out / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][1]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[1.0, 0.5 * 2**k, 0.25 * 2**k] for k in range(4)]
    shifts = [d["coordinateTransformations"][1]["translation"] for d in ms["datasets"]]
    assert shifts == [[0.0, 0.5 * (2**k - 1) / 2, 0.25 * (2**k - 1) / 2] for k in range(4)]
    root = zarr.open_group(out, mode="r")
    assert root["0"].shape == (3, 300, 417) and root["0"].chunks == (3, 64, 64)

    with open_slide(out) as s:
        assert s.metadata["format"] == "ome-zarr"
        assert s.mpp == pytest.approx((0.5, 0.25))
        assert [lvl.shape[:2] for lvl in s.levels] == [(300, 417), (150, 209), (75, 105), (38, 53)]
        assert s.downsamples == [1.0, 2.0, 4.0, 8.0]
        np.testing.assert_array_equal(s.levels[0].compute(), data)
        lvl1 = _mean2(data)
        np.testing.assert_array_equal(s.levels[1].compute(), lvl1)
        np.testing.assert_array_equal(s.levels[2].compute(), _mean2(lvl1))


def test_pyramid_of_a_real_pyramidal_tiff(tmp_path):
    out = tmp_path / "boxes.ome.zarr"
    *_, fin = build_pyramid(BOXES, out, tile=128, min_size=130)
    assert fin.result["levels"] == 3  # 250 x 300, 125 x 150, 63 x 75
    with open_slide(BOXES) as a, open_slide(out) as b:
        assert b.mpp is None  # no physical size known: pixels
        np.testing.assert_array_equal(a.levels[0].compute(), b.levels[0].compute())


def test_refuses_to_overwrite_unless_asked(source, tmp_path):
    path, data = source
    out = tmp_path / "out.ome.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(PyramidError, match="already exists.*overwrite"):
        build_pyramid(path, out)  # raised at call time, before any work
    assert (out / "precious.txt").read_text() == "keep me"
    list(build_pyramid(path, out, tile=128, overwrite=True))
    assert not (out / "precious.txt").exists()
    with open_slide(out) as s:
        np.testing.assert_array_equal(s.levels[0].compute(), data)
    assert _leftovers(tmp_path, {"src.ome.tif", "out.ome.zarr"}) == []


def test_bad_arguments(source, tmp_path):
    path, _ = source
    with pytest.raises(PyramidError, match="tile 8"):
        build_pyramid(path, tmp_path / "x.zarr", tile=8)
    with pytest.raises(PyramidError, match="is the source"):
        build_pyramid(path, path, overwrite=True)
    text = tmp_path / "notes.txt"
    text.write_text("no")
    with pytest.raises(SlideError, match="notes.txt"):
        build_pyramid(text, tmp_path / "y.zarr")


def test_stop_leaves_nothing_behind(source, tmp_path):
    path, _ = source
    out = tmp_path / "out.ome.zarr"
    stop = threading.Event()
    events = []
    for e in build_pyramid(path, out, tile=64, min_size=70, workers=1, stop=stop):
        events.append(e)
        if isinstance(e, Progress) and e.done == 3:
            stop.set()
    assert isinstance(events[-1], Finished) and events[-1].stopped
    assert max(e.done for e in events if isinstance(e, Progress)) < 10
    assert _leftovers(tmp_path, {"src.ome.tif"}) == []


def test_abandoned_generator_removes_its_temporary_store(source, tmp_path):
    path, _ = source
    events = build_pyramid(path, tmp_path / "out.ome.zarr", tile=64, workers=1)
    for e in events:
        if isinstance(e, Progress):
            break
    assert len(_leftovers(tmp_path, {"src.ome.tif"})) == 1  # the hidden temporary store
    events.close()
    assert _leftovers(tmp_path, {"src.ome.tif"}) == []


def test_corrupt_tile_aborts_cleanly(tmp_path):
    data = _rgb(2048, 1024)
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, data, tile=(256, 256), compression="zlib", photometric="rgb")
    with tifffile.TiffFile(path) as tif:  # the last tile: not read when the slide opens
        offset, count = tif.pages[0].dataoffsets[31], tif.pages[0].databytecounts[31]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00\xff" * (count // 2))
    events = build_pyramid(path, tmp_path / "out.ome.zarr", tile=256, workers=2)
    with pytest.raises(SlideError, match="bad.tif: cannot decode"):
        list(events)
    assert _leftovers(tmp_path, {"bad.tif"}) == []


def test_cli_pyramid(source, tmp_path, capsys):
    path, data = source
    out = tmp_path / "cli.ome.zarr"
    assert main(["pyramid", str(path), str(out), "--chunk", "128", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["out"] == result["path"] == str(out) and result["shape"] == [300, 417]
    assert main(["pyramid", str(path), str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["pyramid", str(path), str(out), "--overwrite", "--chunk", "64"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert zarr.open_group(out, mode="r")["0"].chunks == (3, 64, 64)
