"""GeoJSON export: round trip through the project's reader, level-0 placement, holes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr

from napari_gigapixel.core.events import JobStopped, Progress
from napari_gigapixel.core.export import (
    ExportError,
    export_events,
    export_geojson,
    trace_polygons,
)
from napari_gigapixel.core.mask_io import load_mask, read_geojson, write_mask
from napari_gigapixel.core.masks import AnnotationMask
from napari_gigapixel.core.prediction_store import (
    build_pyramids,
    commit_store,
    create_store,
    mark_complete,
    open_prediction,
)

H, W = 701, 1303  # level 0, not a multiple of the prediction's stride


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def _area(ring) -> float:
    r = np.asarray(ring, float)
    x, y = r[:, 0], r[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _outer(path) -> np.ndarray:
    """Outer ring of the first feature of a GeoJSON file."""
    return np.asarray(json.loads(path.read_text())["features"][0]["geometry"]["coordinates"][0])


def _distance_to_ring(points: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Distance of each point to the closed polyline ``ring``."""
    a, b = ring[:-1][None], ring[1:][None]
    p = points[:, None]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0, 1)
    return np.hypot(*(a + t[..., None] * ab - p).transpose(2, 0, 1)).min(axis=1)


def _tissue(shape: tuple[int, int]) -> np.ndarray:
    """Three pieces: a disc with two holes (one holding an island), an ellipse, a bar."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    h, w = shape
    m = np.hypot(yy - 0.45 * h, xx - 0.25 * w) < 0.38 * h
    m &= np.hypot(yy - 0.45 * h, xx - 0.25 * w) > 0.16 * h  # a hole...
    m |= np.hypot(yy - 0.45 * h, xx - 0.25 * w) < 0.06 * h  # ...with an island in it
    m &= ~((abs(yy - 0.2 * h) < 0.04 * h) & (abs(xx - 0.3 * w) < 0.03 * w))  # a second hole
    m |= ((yy - 0.5 * h) / (0.3 * h)) ** 2 + ((xx - 0.65 * w) / (0.12 * w)) ** 2 < 1
    m |= (abs(yy - 0.91 * h) < 0.04 * h) & (abs(xx - 0.8 * w) < 0.15 * w)
    return m.astype(np.uint8)


def _store(path, level: np.ndarray, d: float, slide_shape, offset=(0, 0), region=None) -> str:
    """A finished prediction store as `predict` writes it, without a model."""
    meta = {
        "kind": "prediction",
        "downsample": float(d),
        "slide_shape": list(slide_shape),
        "offset": list(offset),
        "region_shape": list(region or slide_shape),
        "threshold": 0.5,
    }
    tmp = f"{path}.partial"
    prob, mask = create_store(tmp, level.shape, 128, meta)
    prob[:] = level * 255
    mask[:] = level
    build_pyramids(tmp)
    mark_complete(tmp)
    commit_store(tmp, path, overwrite=False)
    return str(path)


@pytest.fixture
def prediction(tmp_path) -> str:
    level = _tissue((-(-H // 4), -(-W // 4)))  # at the model's output stride, 1/4
    return _store(tmp_path / "pred.zarr", level, 4, (H, W))


def test_prediction_round_trips_through_the_geojson_reader(prediction, tmp_path):
    out = tmp_path / "tissue.geojson"
    res = export_geojson(prediction, out)
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection"
    # Three pieces of tissue plus the island in the hole; two holes kept.
    assert res["features"] == len(doc["features"]) == 4
    assert res["holes"] == 2 and res["working_downsample"] == 4.0 and res["tolerance"] == 0.25
    assert res["outline"] == "probability"  # a 0/255 one here: the mask's own outline
    holes = sorted(len(f["geometry"]["coordinates"]) - 1 for f in doc["features"])
    assert holes == [0, 0, 0, 2]
    for feat in doc["features"]:
        assert feat["geometry"]["type"] == "Polygon"
        props = feat["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["name"] == "Tissue"
        assert len(props["classification"]["color"]) == 3
        rings = feat["geometry"]["coordinates"]
        assert all(r[0] == r[-1] for r in rings)  # closed
        assert _area(rings[0]) > 0 and all(_area(r) < 0 for r in rings[1:])  # RFC 7946
    truth = np.asarray(open_prediction(prediction).mask_level0(refine=False))
    back = load_mask(out, (H, W))
    assert back.downsample == 1.0  # small slide: the reader rasterises at level 0
    reread = back.read_window(0, H, 0, W, 1)
    assert _dice(reread, truth) >= 0.99
    # Exact on the traced grid: every 1/4 pixel centre is on its side of the outline.
    level = np.asarray(open_prediction(prediction).mask[0])
    np.testing.assert_array_equal(back.read_window(0, H, 0, W, 4), level)
    # The islands are where the mask says, holes are empty.
    assert reread[int(0.45 * H), int(0.25 * W)] == 1  # island
    assert reread[int(0.45 * H), int(0.25 * W + 0.1 * H)] == 0  # hole around it
    assert reread[int(0.2 * H), int(0.3 * W)] == 0  # second hole


def test_a_prediction_is_traced_along_its_probability(tmp_path):
    # A smooth probability: the outline is its 0.5 line, what evaluate counts.
    from scipy import ndimage as ndi

    rng = np.random.default_rng(5)
    f = ndi.gaussian_filter(rng.normal(size=(-(-H // 4), -(-W // 4))), 6.0)
    prob = np.clip(127.5 + 127.5 * f / np.abs(f).max() * 3, 0, 255).astype(np.uint8)
    level = (prob >= 128).astype(np.uint8)
    path = _store(tmp_path / "p.zarr", level, 4, (H, W))
    root = zarr.open_group(path, mode="r+", zarr_format=2)
    root["0"][:] = prob
    res = export_geojson(path, tmp_path / "p.geojson")
    assert res["outline"] == "probability" and res["working_downsample"] == 4.0
    reread = load_mask(tmp_path / "p.geojson", (H, W)).read_window(0, H, 0, W, 1)
    store = open_prediction(path)
    line = np.asarray(store.mask_level0())
    blocks = np.asarray(store.mask_level0(refine=False))
    assert _dice(reread, line) >= 0.998
    assert _dice(reread, line) > _dice(blocks, line) + 0.002  # not the blocks' staircase
    # Too big for the budget: the mask's coverage at a coarser level, as before.
    coarse = export_geojson(path, tmp_path / "c.geojson", max_pixels=8_000)
    assert coarse["outline"] == "mask" and coarse["working_downsample"] == 16.0


def test_coarse_working_level_keeps_the_outline(prediction, tmp_path):
    # A budget of 8,000 px forces a 4x coarser working level (1/16 of level 0).
    res = export_geojson(prediction, tmp_path / "c.geojson", max_pixels=8_000)
    assert res["working_downsample"] == 16.0
    truth = np.asarray(open_prediction(prediction).mask_level0(refine=False))
    reread = load_mask(tmp_path / "c.geojson", (H, W)).read_window(0, H, 0, W, 1)
    assert _dice(reread, truth) >= 0.98


def test_known_square_lands_at_its_level0_place(tmp_path):
    # A region prediction at 1/4 whose region starts at level-0 (y, x) = (100, 200).
    level = np.zeros((30, 40), np.uint8)
    level[10:20, 5:15] = 1  # region px rows 40-80, cols 20-60
    path = _store(tmp_path / "sq.zarr", level, 4, (400, 600), (100, 200), (120, 160))
    export_geojson(path, tmp_path / "sq.geojson", tolerance=0)
    doc = json.loads((tmp_path / "sq.geojson").read_text())
    (feat,) = doc["features"]
    ring = np.asarray(feat["geometry"]["coordinates"][0])
    # QuPath's corner convention: x in [220, 260), y in [140, 180).
    assert ring[:, 0].min() == 220 and ring[:, 0].max() == 260
    assert ring[:, 1].min() == 140 and ring[:, 1].max() == 180
    # Marching squares cuts each corner by half a mask pixel (2 x 2 level-0 px / 2).
    assert _area(ring) == pytest.approx(40 * 40 - 4 * 2)
    back = load_mask(tmp_path / "sq.geojson", (400, 600)).read_window(0, 400, 0, 600, 1)
    assert np.argwhere(back).min(0).tolist() == [140, 220]
    assert np.argwhere(back).max(0).tolist() == [179, 259]


def test_tolerance_and_min_area(tmp_path):
    yy, xx = np.mgrid[:300, :300]
    m = (np.hypot(yy - 150, xx - 150) < 100).astype(np.uint8)
    m[10, 10] = 1  # a one-pixel speck
    m[150, 150] = 0  # a one-pixel hole
    exact = export_geojson(AnnotationMask(m, 2.0), tmp_path / "a.geojson", tolerance=0)
    loose = export_geojson(AnnotationMask(m, 2.0), tmp_path / "b.geojson", tolerance=4)
    # Defaults: pieces and holes under one mask pixel (2 x 2 level-0 px) are left out.
    assert exact["polygons"] == 1 and exact["holes"] == 0 and exact["min_area"] == 4.0
    assert loose["vertices"] < exact["vertices"] / 3
    keep = export_geojson(AnnotationMask(m, 2.0), tmp_path / "c.geojson", min_area=0)
    assert keep["polygons"] == 2 and keep["holes"] == 1
    # Douglas-Peucker: the loose outline stays within its tolerance of the exact one.
    ex, lo = _outer(tmp_path / "a.geojson"), _outer(tmp_path / "b.geojson")
    assert _distance_to_ring(ex, lo).max() <= 4 + 1e-9


def test_scribbles_export_tissue_and_background(tmp_path):
    s = np.zeros((64, 64), np.uint8)
    s[5:20, 5:40] = 2
    s[40:60, 10:30] = 1
    res = export_geojson(AnnotationMask(s, 8.0, kind="scribble"), tmp_path / "s.geojson")
    assert res["features"] == 2
    polys, values = read_geojson(tmp_path / "s.geojson", kind="scribble")
    assert sorted(values) == [1, 2]
    back = load_mask(tmp_path / "s.geojson", (512, 512), kind="scribble")
    assert back.downsample == 1.0
    np.testing.assert_array_equal(back.read_window(0, 512, 0, 512, 8), s)


def test_merge_writes_one_multipolygon(prediction, tmp_path):
    export_geojson(prediction, tmp_path / "m.geojson", merge=True)
    (feat,) = json.loads((tmp_path / "m.geojson").read_text())["features"]
    assert feat["geometry"]["type"] == "MultiPolygon"
    assert len(feat["geometry"]["coordinates"]) == 4


def test_mask_files_with_and_without_a_recorded_level(tmp_path):
    m = np.zeros((50, 80), np.uint8)
    m[10:20, 30:50] = 1
    write_mask(tmp_path / "m.tif", m, downsample=8)
    # Our own mask files record their level: no slide needed.
    export_geojson(tmp_path / "m.tif", tmp_path / "m.geojson")
    ring = _outer(tmp_path / "m.geojson")
    assert (ring[:, 0].min(), ring[:, 0].max(), ring[:, 1].min(), ring[:, 1].max()) == (
        240, 400, 80, 160,
    )  # fmt: skip
    tifffile.imwrite(tmp_path / "plain.tif", m)
    with pytest.raises(ExportError, match="--slide"):
        export_geojson(tmp_path / "plain.tif", tmp_path / "p.geojson")
    res = export_geojson(tmp_path / "plain.tif", tmp_path / "p.geojson", slide_shape=(200, 320))
    assert res["working_downsample"] == 4.0


def test_refuses_to_replace_and_writes_nothing_half_done(prediction, tmp_path):
    out = tmp_path / "t.geojson"
    out.write_text("keep me")
    with pytest.raises(ExportError, match="already exists"):
        export_geojson(prediction, out)
    assert out.read_text() == "keep me"
    with pytest.raises(ExportError, match=r"\.geojson"):
        export_geojson(prediction, tmp_path / "t.txt")
    export_geojson(prediction, out, overwrite=True)
    assert json.loads(out.read_text())["type"] == "FeatureCollection"

    class Stop:
        def is_set(self) -> bool:
            return True

    with pytest.raises(JobStopped):
        list(export_events(prediction, tmp_path / "stopped.geojson", stop=Stop()))
    assert sorted(p.name for p in tmp_path.iterdir() if "geojson" in p.name) == ["t.geojson"]


def test_progress_is_reported_per_strip(prediction, tmp_path, monkeypatch):
    from napari_gigapixel.core import _trace

    monkeypatch.setattr(_trace, "STRIP_ELEMENTS", 326 * 40)  # 40 rows of the 1/4 mask
    events = list(export_events(prediction, tmp_path / "p.geojson"))
    progress = [e for e in events if isinstance(e, Progress)]
    assert [p.done for p in progress] == list(range(1, 6)) and progress[-1].total == 5
    assert events[-1].result["features"] == 4


def test_trace_polygons_empty_and_full():
    assert trace_polygons(np.zeros((5, 5), np.float32), pixel=1.0) == []
    (poly,) = trace_polygons(np.ones((4, 6), np.float32), pixel=2.0, extent=(8, 12))
    ring = poly[0]
    # A mask full to its border is traced along the border, clipped to the extent.
    assert ring[:, 0].min() == 0 and ring[:, 0].max() == 12
    assert ring[:, 1].min() == 0 and ring[:, 1].max() == 8


def test_a_scribble_mask_file_exports_by_its_recorded_kind(tmp_path):
    s = np.zeros((40, 60), np.uint8)
    s[5:15, 5:30] = 2
    s[25:35, 10:50] = 1
    write_mask(tmp_path / "s.ome.zarr", s, downsample=4, kind="scribble")
    res = export_geojson(tmp_path / "s.ome.zarr", tmp_path / "s.geojson")
    names = sorted(
        f["properties"]["classification"]["name"]
        for f in json.loads((tmp_path / "s.geojson").read_text())["features"]
    )
    assert names == ["Background", "Tissue"] and res["working_downsample"] == 4.0
