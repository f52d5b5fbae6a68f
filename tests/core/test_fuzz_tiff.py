"""Fuzzing TIFF readers: mutated bytes of small valid TIFFs, random tags (issue 10, item 5).

The slide reader (and the mask reader on the same files) must answer with a
result or the project's :class:`GigapixelError`; anything else is a failure.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import tifffile
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
DATA = Path(__file__).resolve().parents[1] / "data"


def _tiff_bytes(**kwargs) -> bytes:
    rng = np.random.default_rng(0)
    data = kwargs.pop("data", None)
    if data is None:
        data = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(buf, data, **kwargs)
    return buf.getvalue()


def _pyramid_bytes() -> bytes:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        opts = {"tile": (32, 32), "compression": "zlib", "photometric": "rgb"}
        tw.write(data, subifds=1, **opts)
        tw.write(data[::2, ::2], subfiletype=1, **opts)
    return buf.getvalue()


SEEDS = {
    "tiled": _tiff_bytes(photometric="rgb", tile=(16, 16), compression="zlib"),
    "strips": _tiff_bytes(photometric="rgb"),
    "ome": _tiff_bytes(photometric="rgb", tile=(16, 16), metadata={"axes": "YXS"}, ome=True),
    "pyramid": _pyramid_bytes(),
    "svs": (DATA / "small.svs").read_bytes(),
    "boxes": (DATA / "boxes.tiff").read_bytes(),
}


def _try(data: bytes) -> None:
    folder = tempfile.mkdtemp()
    try:
        path = os.path.join(folder, "f.tif")
        with open(path, "wb") as f:
            f.write(data)
        try:
            with open_slide(path) as s:
                small = s.levels[-1]
                small[:64, :64].compute(scheduler="sync")
                assert small.dtype == np.uint8 and small.shape[2] == 3
        except GigapixelError:
            pass
        try:
            load_mask(path, (40, 56))
        except GigapixelError:
            pass
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@st.composite
def mutated(draw):
    seed = SEEDS[draw(st.sampled_from(sorted(SEEDS)))]
    data = bytearray(seed)
    # Mostly the header and the first IFD (tags), sometimes anywhere.
    head = min(len(data), 512)
    for _ in range(draw(st.integers(1, 6))):
        where = draw(st.integers(0, head - 1) | st.integers(0, len(data) - 1))
        data[where] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_tiffs(data):
    _try(data)


@FUZZ
@given(
    st.sampled_from(["rgb", "minisblack", "separated", "palette", None]),
    st.sampled_from(["uint8", "uint16", "float32", "int8"]),
    st.sampled_from(
        [(12, 10), (12, 10, 1), (12, 10, 3), (12, 10, 4), (4, 12, 10), (2, 3, 12, 10)]
    ),
    st.sampled_from([None, "contig", "separate"]),
    st.sampled_from([None, ["unassalpha"], ["unspecified"], ["assocalpha"]]),
    st.sampled_from([None, (16, 16)]),
)
def test_random_tags(photometric, dtype, shape, planar, extras, tile):
    data = np.zeros(shape, dtype)
    kwargs = {"data": data, "photometric": photometric, "planarconfig": planar, "tile": tile}
    if extras:
        kwargs["extrasamples"] = extras
    try:
        raw = _tiff_bytes(**kwargs)
    except Exception:  # noqa: BLE001 - tifffile refuses to write this combination
        return
    _try(raw)


@FUZZ
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1), st.booleans())
def test_random_header_offsets(offset, count, big_endian):
    # A bare header pointing anywhere, with a random tag count.
    order = ">" if big_endian else "<"
    magic = b"MM" if big_endian else b"II"
    _try(magic + struct.pack(order + "HIH", 42, offset % 64, count) + bytes(50))
