"""Fuzzing zarr / OME-Zarr metadata: random ``.zattrs`` and ``zarr.json`` (issue 10, item 5).

Both readers (slides and masks) must answer every store with a result or the
project's :class:`GigapixelError`; anything else is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_gigapixel.core.errors import GigapixelError
from napari_gigapixel.core.mask_io import load_mask
from napari_gigapixel.core.slide import open_slide

FUZZ = settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
NAMES = st.sampled_from(["y", "x", "c", "z", "t", "s", "row", ""])
AXIS = st.one_of(
    st.fixed_dictionaries(
        {"name": NAMES | JSON},
        optional={"type": st.sampled_from(["space", "channel", "time"]) | JSON, "unit": JSON},
    ),
    NAMES,
    JSON,
)
TRANSFORM = st.fixed_dictionaries(
    {"type": st.sampled_from(["scale", "translation"]) | JSON, "scale": JSON | st.lists(JSON)}
)
DATASET = st.one_of(
    st.fixed_dictionaries(
        {"path": st.sampled_from(["0", "1", "2", "missing"]) | JSON},
        optional={"coordinateTransformations": st.lists(TRANSFORM, max_size=2) | JSON},
    ),
    JSON,
)
MULTISCALE = st.fixed_dictionaries(
    {},
    optional={
        "version": JSON,
        "axes": st.lists(AXIS, max_size=4) | JSON,
        "datasets": st.lists(DATASET, max_size=3) | JSON,
    },
)
OMERO = st.fixed_dictionaries(
    {"channels": st.lists(st.fixed_dictionaries({"label": JSON}), max_size=4) | JSON}
)
ATTRS = st.one_of(
    st.fixed_dictionaries(
        {"multiscales": st.lists(MULTISCALE, min_size=1, max_size=2) | JSON},
        optional={"omero": OMERO | JSON, "napari_gigapixel": JSON},
    ),
    st.fixed_dictionaries({"ome": st.fixed_dictionaries({}, optional={"multiscales": JSON})}),
    JSON,
)


def _store(folder: str, fmt: int) -> str:
    path = os.path.join(folder, "img.ome.zarr")
    root = zarr.open_group(path, mode="w", zarr_format=fmt)
    for k, shape in enumerate([(3, 40, 48), (3, 20, 24)]):
        arr = root.create_array(str(k), shape=shape, chunks=shape, dtype="u1")
        arr[:] = np.full(shape, 100 + k, np.uint8)
    mask = root.create_array("2", shape=(40, 48), chunks=(40, 48), dtype="u1")
    mask[:] = 1
    return path


def _try_both(path: str) -> None:
    try:
        with open_slide(path) as s:
            assert s.levels[0].dtype == np.uint8 and s.levels[0].shape[2] == 3
    except GigapixelError:
        pass
    try:
        load_mask(path, (40, 48))
    except GigapixelError:
        pass


@FUZZ
@given(ATTRS)
def test_random_zattrs_zarr_v2(attrs):
    folder = tempfile.mkdtemp()
    try:
        path = _store(folder, 2)
        with open(os.path.join(path, ".zattrs"), "w") as f:
            json.dump(attrs, f)
        _try_both(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@FUZZ
@given(ATTRS)
def test_random_attributes_zarr_v3(attrs):
    folder = tempfile.mkdtemp()
    try:
        path = _store(folder, 3)
        meta_path = os.path.join(path, "zarr.json")
        with open(meta_path) as f:
            meta = json.load(f)
        meta["attributes"] = attrs
        with open(meta_path, "w") as f:
            json.dump(meta, f)
        _try_both(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@FUZZ
@given(st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
def test_garbage_metadata_files(raw):
    folder = tempfile.mkdtemp()
    try:
        path = _store(folder, 2)
        with open(os.path.join(path, ".zattrs"), "wb") as f:
            f.write(raw)
        with open(os.path.join(path, "0", ".zarray"), "wb") as f:
            f.write(raw)
        _try_both(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
