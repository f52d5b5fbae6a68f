"""``training.preflight``: every file and location checked before TensorFlow loads."""

from __future__ import annotations

import math
import shutil
from collections import namedtuple

import numpy as np
import pytest
import tifffile

from napari_gigapixel.core.errors import GigapixelError
from napari_gigapixel.core.model_io import ModelFileError
from napari_gigapixel.core.preflight import InputError, OutputError
from napari_gigapixel.core.training import TrainConfig, TrainConfigError, preflight


@pytest.fixture()
def pair(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (128, 192, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", img, photometric="rgb")
    tifffile.imwrite(tmp_path / "m.tif", (img[::4, ::4, 0] > 128).astype(np.uint8))
    return str(tmp_path / "s.tif"), str(tmp_path / "m.tif")


def _cfg(pair, tmp_path, **kw) -> TrainConfig:
    s, m = pair
    fields = {"images": [s], "masks": [m], "out": str(tmp_path / "o.keras"), **kw}
    return TrainConfig(**fields)


def test_a_good_configuration_passes_and_writes_nothing(pair, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    preflight(_cfg(pair, tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"memory_gb": math.nan}, TrainConfigError, "memory_gb must be a finite number"),
        ({"memory_gb": -1.0}, TrainConfigError, "memory_gb must be a finite number"),
        ({"lr": math.inf}, TrainConfigError, "lr must be a finite number"),
        ({"masks": ["nope.tif"]}, InputError, "nope.tif: no such mask"),
        ({"images": ["nope.tif"]}, InputError, "nope.tif: no such slide"),
        ({"rois": [(0, 0, 500, 10)]}, GigapixelError, "not inside the 128 x 192 slide"),
        ({"resume": "nope.keras"}, InputError, "nope.keras: no such checkpoint"),
    ],
)
def test_bad_fields_and_files_are_caught(pair, tmp_path, change, error, match):
    with pytest.raises(error, match=match):
        preflight(_cfg(pair, tmp_path, **change))


def test_an_existing_model_needs_overwrite_unless_it_is_resumed(pair, tmp_path):
    out = tmp_path / "o.keras"
    out.write_bytes(b"earlier")
    with pytest.raises(OutputError, match="already exists; pass --overwrite"):
        preflight(_cfg(pair, tmp_path))
    preflight(_cfg(pair, tmp_path, overwrite=True))
    # Continuing a model into its own file is not "replacing" it; the file is
    # then read as a checkpoint, and this one is not a model.
    with pytest.raises(ModelFileError, match="o.keras"):
        preflight(_cfg(pair, tmp_path, resume=str(out)))


def test_a_cache_that_cannot_fit_is_refused(pair, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage(10, 10, 0))
    with pytest.raises(TrainConfigError, match="decoded slides need about"):
        preflight(_cfg(pair, tmp_path, memory_gb=1e-6, cache_dir=str(tmp_path)))


def _checkpoint_meta_only(path, white_balance: bool) -> str:
    """A file with napari-gigapixel's metadata only (preflight reads nothing else)."""
    import json
    import zipfile

    from napari_gigapixel.core.model_io import META_ENTRY, META_FORMAT

    meta = {
        "format": META_FORMAT,
        "geometry": {"stride": 32, "output_stride": 4, "rf_before": 48, "rf_after": 68},
        "model_config": {"white_balance": white_balance},
    }
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(META_ENTRY, json.dumps(meta))
    return str(path)


def test_resuming_with_ink_needs_a_white_balanced_checkpoint(pair, tmp_path):
    # The trainer keeps a resumed model's input convention; ink without white
    # balance would silently recolour nothing, so it is refused before any work.
    plain = _checkpoint_meta_only(tmp_path / "plain.keras", white_balance=False)
    with pytest.raises(TrainConfigError, match="plain.keras: this checkpoint was trained without"):
        preflight(_cfg(pair, tmp_path, resume=plain, augment="ink"))
    # Other modes resume as before; so does ink on a white-balanced checkpoint.
    preflight(_cfg(pair, tmp_path, resume=plain, augment="stain"))
    balanced = _checkpoint_meta_only(tmp_path / "balanced.keras", white_balance=True)
    preflight(_cfg(pair, tmp_path, resume=balanced, augment="ink"))
    # The checkpoint's convention decides, not white_balance (a resumed run keeps it):
    # ink on a balanced checkpoint resumed with white_balance off is not refused,
    # ink on an unbalanced one with white_balance on still is.
    preflight(_cfg(pair, tmp_path, resume=balanced, augment="ink", white_balance=False))
    with pytest.raises(TrainConfigError, match="trained without white balance"):
        preflight(_cfg(pair, tmp_path, resume=plain, augment="ink", white_balance=True))
