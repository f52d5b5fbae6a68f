"""The model builder, its geometry (checked by perturbation) and model files."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from napari_gigapixel.core.unet import (  # noqa: E402
    ModelConfig,
    ModelFileError,
    build_unet,
    count_params,
    load_model,
    model_geometry,
    save_model,
)


def test_default_model_is_small_with_output_stride_4():
    model = build_unet(ModelConfig(), seed=0)
    assert 4000 <= count_params(model) <= 5500
    assert not any("BatchNormalization" in type(layer).__name__ for layer in model.layers)
    geo = model_geometry(model)
    assert (geo.stride, geo.output_stride) == (32, 4)
    assert geo.halo % geo.stride == 0 and geo.halo >= max(geo.rf_before, geo.rf_after)
    # 'same' padding puts the odd pixel after: the field is asymmetric.
    assert geo.rf_after > geo.rf_before
    x = np.zeros((1, 64, 96, 3), np.uint8)
    y = np.asarray(model(x))
    assert y.shape == (1, 16, 24, 1) and y.dtype == np.float32


def test_full_resolution_head_and_configurable_architecture():
    cfg = ModelConfig(
        widths=(4, 8), kernels=(7, 5), strides=(4, 4), decoder_widths=(2, 4), output_stride=1
    )
    model = build_unet(cfg, seed=0)
    geo = model_geometry(model)
    assert (geo.stride, geo.output_stride) == (16, 1)
    assert np.asarray(model(np.zeros((1, 32, 48, 3), np.uint8))).shape == (1, 32, 48, 1)


def test_same_seed_same_weights():
    a = build_unet(ModelConfig(), seed=5).get_weights()
    b = build_unet(ModelConfig(), seed=5).get_weights()
    c = build_unet(ModelConfig(), seed=6).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


@pytest.mark.parametrize("output_stride", [4, 1])
def test_receptive_field_covers_the_perturbation_response(output_stride):
    """Perturb one input pixel: every output that changes lies within the analytic field."""
    cfg = ModelConfig(widths=(4, 6, 8), decoder_widths=(3, 4, 4), output_stride=output_stride)
    model = build_unet(cfg, seed=1, dtype="float64")
    rng = np.random.default_rng(0)
    model.set_weights([w + rng.normal(0, 0.2, w.shape) for w in model.get_weights()])
    geo = model_geometry(model)
    os_ = geo.output_stride
    size = 384
    x = rng.integers(0, 256, (1, size, size, 3)).astype(np.uint8)
    base = np.asarray(model(x))[0, :, :, 0]
    seen_before = seen_after = 0
    for py, px in [(190, 190), (191, 189), (160, 223)]:
        x2 = x.copy()
        x2[0, py, px] = 255 - x2[0, py, px]
        diff = np.abs(np.asarray(model(x2))[0, :, :, 0] - base) > 0
        ys, xs = np.nonzero(diff)
        assert ys.size
        # Output o covers level-0 [o*os, o*os + os - 1]; its field reaches
        # rf_before above/left of that block and rf_after below/right.
        for o, p in ((ys, py), (xs, px)):
            before = o * os_ - p  # > 0: the pixel lies above/left of the block
            after = p - (o * os_ + os_ - 1)
            assert before.max() <= geo.rf_before and after.max() <= geo.rf_after
            seen_before = max(seen_before, int(before.max()))
            seen_after = max(seen_after, int(after.max()))
    # The analytic field is tight to within one stride block, not a loose bound.
    assert seen_before > geo.rf_before - geo.stride
    assert seen_after > geo.rf_after - geo.stride


def test_save_load_round_trip_with_metadata(tmp_path):
    model = build_unet(ModelConfig(), seed=2)
    geo = model_geometry(model)
    out = tmp_path / "m.keras"
    save_model(
        model,
        out,
        geometry=geo,
        model_config=ModelConfig(),
        train_config={"loss": "dice"},
        history=[{"step": 1, "loss": 0.5}],
    )
    assert [p.name for p in tmp_path.iterdir()] == ["m.keras"]  # no temp file left
    # Readable as any other output (open()'s 0o666 less the umask), not mkstemp's 0600.
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert out.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    plain.unlink()
    loaded, meta = load_model(out)
    assert meta["geometry"] == geo
    assert meta["model_config"] == ModelConfig()
    assert meta["train_config"] == {"loss": "dice"}
    assert meta["history"] == [{"step": 1, "loss": 0.5}]
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_corrupt_truncated_and_foreign_files_are_refused(tmp_path):
    model = build_unet(ModelConfig(), seed=2)
    good = tmp_path / "good.keras"
    save_model(model, good, geometry=model_geometry(model))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated.keras"):
        load_model(truncated)
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    with pytest.raises(ModelFileError, match="notes.keras"):
        load_model(text)
    foreign = tmp_path / "foreign.keras"
    model.save(foreign)
    assert zipfile.is_zipfile(foreign)
    with pytest.raises(ModelFileError, match="another project"):
        load_model(foreign)
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(os.fspath(tmp_path / "missing.keras"))
    (tmp_path / "folder.keras").mkdir()
    with pytest.raises(ModelFileError, match="folder.keras: is a folder, not a model file"):
        load_model(os.fspath(tmp_path / "folder.keras"))
