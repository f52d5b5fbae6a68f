"""Fuzzing model files: truncated and mutated ``.keras`` zips (issue 10, item 5).

Any exception other than the project's :class:`GigapixelError` is a failure.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_gigapixel.core.errors import GigapixelError
from napari_gigapixel.core.model_io import META_ENTRY, META_FORMAT, read_model_meta

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

GEOMETRY = {"stride": 16, "output_stride": 4, "rf_before": 40, "rf_after": 41}


def _keras_zip(meta: object, compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A small archive laid out like a saved model (what read_model_meta reads)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3"}))
        zf.writestr("config.json", json.dumps({"class_name": "Functional"}) * 20)
        zf.writestr("model.weights.h5", bytes(range(256)) * 8)
        zf.writestr(META_ENTRY, meta if isinstance(meta, str) else json.dumps(meta))
    return buf.getvalue()


VALID = _keras_zip({"format": META_FORMAT, "version": 1, "geometry": GEOMETRY})


def _read(data: bytes) -> None:
    fd, path = tempfile.mkstemp(suffix=".keras")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            meta = read_model_meta(path)
        except GigapixelError:
            return
        # What it accepts is usable: the geometry callers rebuild.
        assert all(int(meta["geometry"][k]) >= 0 for k in GEOMETRY)
    finally:
        os.unlink(path)


def test_the_valid_archive_reads():
    fd, path = tempfile.mkstemp(suffix=".keras")
    with os.fdopen(fd, "wb") as f:
        f.write(VALID)
    try:
        assert read_model_meta(path)["geometry"] == GEOMETRY
    finally:
        os.unlink(path)


@FUZZ
@given(st.integers(0, len(VALID)))
def test_truncated_archives(n):
    _read(VALID[:n])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=8))
def test_mutated_bytes(edits):
    data = bytearray(VALID)
    for pos, value in edits:
        data[pos] = value
    _read(bytes(data))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@FUZZ
@given(
    st.fixed_dictionaries(
        {"format": st.sampled_from([META_FORMAT, "other"]), "geometry": JSON | st.just(GEOMETRY)},
        optional={"model_config": JSON, "version": JSON},
    )
    | JSON
)
def test_random_metadata(meta):
    _read(_keras_zip(meta))


@FUZZ
@given(st.binary(max_size=64))
def test_garbage_metadata_bytes(raw):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(META_ENTRY, raw)
    _read(buf.getvalue())
