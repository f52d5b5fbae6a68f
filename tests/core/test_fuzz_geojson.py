"""Fuzzing GeoJSON masks: random JSON structures and coordinates (issue 10, item 5).

Any exception other than the project's :class:`GigapixelError` is a failure.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_gigapixel.core.errors import GigapixelError
from napari_gigapixel.core.mask_io import load_mask

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
SLIDE = (300, 500)

NUMBER = st.integers(-1000, 1000) | st.floats(allow_nan=True, allow_infinity=True)
POINT = st.lists(NUMBER, min_size=0, max_size=4)
RING = st.lists(POINT, max_size=6)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBER | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=16,
)
GTYPE = st.sampled_from(["Polygon", "MultiPolygon", "GeometryCollection", "Point", "Foo"])


@st.composite
def geometry(draw, depth=0):
    gtype = draw(GTYPE)
    if gtype == "GeometryCollection" and depth < 2:
        return {"type": gtype, "geometries": draw(st.lists(geometry(depth + 1), max_size=3))}
    coords = draw(
        st.one_of(
            st.lists(RING, max_size=3),
            st.lists(st.lists(RING, max_size=2), max_size=2),
            JSON,
        )
    )
    return {"type": gtype, "coordinates": coords}


PROPERTIES = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"classification": st.one_of(JSON, st.fixed_dictionaries({"name": JSON}))}
    ),
)
FEATURE = st.fixed_dictionaries(
    {"type": st.just("Feature"), "geometry": geometry() | JSON},
    optional={"properties": PROPERTIES},
)
DOCUMENT = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("FeatureCollection"), "features": st.lists(FEATURE, max_size=4) | JSON}
    ),
    st.lists(FEATURE | JSON, max_size=4),
    FEATURE,
    geometry(),
    JSON,
)


def _load(text: str, kind: str | None) -> None:
    fd, path = tempfile.mkstemp(suffix=".geojson")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            mask = load_mask(path, SLIDE, kind=kind)
        except GigapixelError:
            return
        # Whatever loads is a usable mask of the slide.
        window = mask.read_window(0, SLIDE[0], 0, SLIDE[1], stride=8)
        assert window.dtype == np.uint8 and window.max() <= 2
    finally:
        os.unlink(path)


@FUZZ
@given(DOCUMENT, st.sampled_from([None, "dense", "scribble"]))
def test_random_geojson_documents(doc, kind):
    _load(json.dumps(doc), kind)


@FUZZ
@given(
    st.lists(
        st.lists(st.tuples(NUMBER, NUMBER), min_size=3, max_size=8).map(
            lambda r: [list(p) for p in r]
        ),
        min_size=1,
        max_size=3,
    )
)
def test_random_polygon_coordinates(rings):
    _load(json.dumps({"type": "Polygon", "coordinates": rings}), None)


@FUZZ
@given(st.text(max_size=40))
def test_random_text(text):
    _load(text, None)
