"""The trainer generator: tile-size independence, events, checkpoints, stop and resume."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from napari_gigapixel.core.errors import GigapixelError  # noqa: E402
from napari_gigapixel.core.events import (  # noqa: E402
    CheckpointEvent,
    Finished,
    PreviewEvent,
    Progress,
    StepEvent,
)
from napari_gigapixel.core.masks import AnnotationMask, MaskError  # noqa: E402
from napari_gigapixel.core.training import TrainConfig, train  # noqa: E402
from napari_gigapixel.core.unet import ModelConfig, load_model  # noqa: E402

SMALL = ModelConfig(widths=(4, 6, 8), decoder_widths=(3, 4, 4))


def _pair(shape, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    tissue = (np.sin(yy / 23.0) * np.cos(xx / 31.0)) > 0.1
    img = np.where(tissue[..., None], [180, 90, 160], [235, 230, 235]).astype(np.float64)
    img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    # The mask at annotation level 1/2 (nearest upsampled per tile by the trainer).
    return img, tissue[::2, ::2].astype(np.uint8)


@pytest.fixture(scope="module")
def data():
    return [_pair((200, 300), 0), _pair((156, 236), 1)]


def _cfg(data, tmp_path, **kw):
    base = dict(
        images=[d[0] for d in data],
        masks=[d[1] for d in data],
        out=str(tmp_path / "model.keras"),
        steps=3,
        loss="dice+bce",
        lr=1e-2,
        model=SMALL,
        seed=7,
        mixed_precision=False,  # float32: tile-size independence to 1e-5
    )
    base.update(kw)
    return TrainConfig(**base)


def run(cfg, stop=None):
    return list(train(cfg, stop))


def _weights(path):
    model, meta = load_model(path)
    return model.get_weights(), meta


@pytest.mark.parametrize("augment", [False, True])
def test_three_steps_same_weights_whatever_the_tile(data, tmp_path, augment):
    finals = []
    for i, tile in enumerate([64, 128, "auto"]):
        out = tmp_path / f"m{i}.keras"
        events = run(
            _cfg(
                data,
                tmp_path,
                tile=tile,
                out=str(out),
                augment=augment,
                rois=[None, (10, 20, 150, 221)],
            )
        )
        fin = events[-1]
        assert isinstance(fin, Finished) and not fin.stopped
        finals.append((_weights(out)[0], fin.result))
    assert finals[0][1]["n_tiles"] > finals[1][1]["n_tiles"] > finals[2][1]["n_tiles"] == 2
    for weights, _ in finals[1:]:
        for a, b in zip(weights, finals[0][0]):
            np.testing.assert_allclose(a, b, atol=2e-5)
    assert finals[0][1]["loss"] == pytest.approx(finals[2][1]["loss"], rel=1e-5)


def test_events_checkpoint_metadata_and_learning(data, tmp_path):
    cfg = _cfg(data[:1], tmp_path, steps=6, checkpoint_every=2, tile=64, loss="dice")
    events = run(cfg)
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[-1].loss < steps[0].loss  # it learns
    assert all(e.peak_rss_bytes > 0 and e.n_tiles > 1 and e.tile == 64 for e in steps)
    tiles = [e for e in events if isinstance(e, Progress) and e.stage == "tiles"]
    # Dice: a forward pass and a gradient pass over every tile.
    assert tiles[0].total == 2 * steps[0].n_tiles
    previews = [e for e in events if isinstance(e, PreviewEvent)]
    assert len(previews) == 6
    p = previews[-1]
    assert p.downsample == 32 and p.probability.shape == (-(-200 // 32), -(-300 // 32))
    assert 0 <= p.probability.min() and p.probability.max() <= 1
    ckpts = [e for e in events if isinstance(e, CheckpointEvent)]
    assert [c.step for c in ckpts] == [2, 4, 6]
    _, meta = _weights(cfg.out)
    assert [h["step"] for h in meta["history"]] == [1, 2, 3, 4, 5, 6]
    assert meta["train_config"]["loss"] == "dice"
    # The architecture asked for, plus the recipe's input statistics and white balance.
    mcfg = meta["model_config"]
    assert mcfg.white_balance is True and mcfg.white_field is True
    assert mcfg.input_mean is not None
    plain = dataclasses.replace(
        mcfg, input_mean=None, input_std=None, white_balance=False, white_field=False
    )
    assert plain == SMALL
    fin = events[-1].result
    assert fin["steps"] == 6 and fin["tile"] == 64 and 0 <= fin["dice"] <= 1


class StopAfter:
    """A stop flag that turns on after ``n`` checks (i.e. between two tiles)."""

    def __init__(self, n):
        self.n = n

    def is_set(self):
        self.n -= 1
        return self.n < 0


def test_stop_leaves_a_checkpoint_that_resumes_exactly(data, tmp_path):
    ref_out = tmp_path / "ref.keras"
    run(_cfg(data[:1], tmp_path, steps=2, tile=64, out=str(ref_out), loss="bce"))
    ref, _ = _weights(ref_out)

    out = tmp_path / "stopped.keras"
    n_tiles = len(
        [
            e
            for e in run(_cfg(data[:1], tmp_path, steps=1, tile=64, out=str(out), loss="bce"))
            if isinstance(e, Progress) and e.stage == "tiles"
        ]
    )
    out.unlink()
    # Stop in the middle of step 2 (checks: one per tile and one per step).
    events = run(
        _cfg(data[:1], tmp_path, steps=2, tile=64, out=str(out), loss="bce", checkpoint_every=100),
        StopAfter(n_tiles + 1 + n_tiles // 2),
    )
    assert events[-1].stopped and events[-1].result["steps"] == 1
    assert [e.step for e in events if isinstance(e, CheckpointEvent)] == [1]
    resumed_out = tmp_path / "resumed.keras"
    run(
        _cfg(
            data[:1], tmp_path, steps=1, tile=64, out=str(resumed_out), loss="bce", resume=str(out)
        )
    )
    weights, meta = _weights(resumed_out)
    assert [h["step"] for h in meta["history"]] == [1, 2]
    for a, b in zip(weights, ref):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_stop_before_the_first_step_writes_nothing(data, tmp_path):
    flag = threading.Event()
    flag.set()
    events = run(_cfg(data[:1], tmp_path, tile=64), flag)
    assert events[-1].stopped and events[-1].result["steps"] == 0
    assert not (tmp_path / "model.keras").exists()


def test_unlabelled_pixels_get_exactly_zero_gradient():
    """Scribble pixels with weight 0 contribute nothing, bit for bit, to every loss."""
    from napari_gigapixel.core._backend import TileStep
    from napari_gigapixel.core.unet import build_unet

    model = build_unet(SMALL, seed=1)
    step = TileStep(model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    y = rng.integers(0, 2, (16, 16)).astype(np.uint8)
    w = np.zeros((16, 16), np.uint8)
    w[4:9, 3:12] = 1  # a labelled scribble; the rest is unlabelled
    coeffs = dict(c_bce=0.7, c_da=-0.3, c_db=0.2, c_dice=0.5)
    # All unlabelled: every parameter gradient is exactly zero.
    none = step.gradient(x, y, np.zeros_like(w), 0, 0, **coeffs)
    assert all(not np.any(g) for g in none.grads)
    # Targets that differ only where the weight is 0 give bit-identical gradients.
    base = step.gradient(x, y, w, 0, 0, **coeffs)
    y2 = np.where(w > 0, y, 1 - y).astype(np.uint8)
    other = step.gradient(x, y2, w, 0, 0, **coeffs)
    assert any(np.any(g) for g in base.grads)
    for g1, g2 in zip(base.grads, other.grads):
        np.testing.assert_array_equal(g1, g2)


def test_scribbles_train_to_a_finite_loss(data, tmp_path):
    img, dense = data[0]
    scrib = np.zeros_like(dense)
    scrib[5:20, 5:60] = 2 * dense[5:20, 5:60] + (1 - dense[5:20, 5:60])
    cfg = _cfg(
        [(img, AnnotationMask(scrib, 2.0, "scribble", "scribbles"))],
        tmp_path,
        steps=1,
        tile=64,
        loss="bce",
    )
    events = run(cfg)
    assert isinstance(events[-1], Finished) and np.isfinite(events[-1].result["loss"])


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: (d[0][:, :, :2], d[1]), "RGB"),
        (lambda d: (d[0], np.zeros_like(d[1])), "no tissue"),
        (lambda d: (d[0], np.ones((77, 13), np.uint8)), "cannot overlay"),
        (lambda d: ("/nonexistent/slide.tif", d[1]), "no such slide"),
        (lambda d: (d[0], "/nonexistent/mask.tif"), "no such mask"),
    ],
)
def test_bad_input_raises_clear_error_and_writes_nothing(data, tmp_path, mutate, match):
    img, mask = mutate(data[0])
    with pytest.raises(GigapixelError, match=match):
        run(_cfg([(img, mask)], tmp_path, steps=1))
    assert list(tmp_path.iterdir()) == []


def test_bad_config_is_refused(data, tmp_path):
    with pytest.raises(GigapixelError, match="unknown loss"):
        run(_cfg(data, tmp_path, loss="l2"))
    with pytest.raises(GigapixelError, match="one mask per image"):
        run(_cfg(data, tmp_path, masks=[data[0][1]]))
    with pytest.raises(GigapixelError, match="ROI"):
        run(_cfg(data[:1], tmp_path, rois=[(0, 0, 500, 10)]))
    with pytest.raises(MaskError):
        run(_cfg(data[:1], tmp_path, masks=[np.ones((3, 3, 3, 3))]))


def test_config_pickles(data, tmp_path):
    import pickle

    cfg = _cfg(data, tmp_path, masks=[AnnotationMask(data[0][1], 2.0), data[1][1]])
    back = pickle.loads(pickle.dumps(cfg))
    assert back.model == cfg.model and back.steps == cfg.steps


@pytest.mark.parametrize("channels", [3, None])
def test_file_cache_reads_windows_like_memory_and_cleans_up(tmp_path, channels):
    from napari_gigapixel.core._train_data import ArrayCache

    rng = np.random.default_rng(0)
    shape = (37, 53) + ((channels,) if channels else ())
    arr = rng.integers(0, 256, shape).astype(np.uint8)
    cache = ArrayCache(shape, in_memory=False, folder=str(tmp_path))
    cache.write_rows(0, arr[:20])
    cache.write_rows(20, arr[20:])
    padded = np.zeros((64, 64) + shape[2:], np.uint8)
    padded[:37, :53] = arr
    for win in [(0, 37, 0, 53), (5, 30, 7, 51), (32, 64, 32, 64), (0, 64, 50, 64)]:
        y0, y1, x0, x1 = win
        np.testing.assert_array_equal(cache.read(*win), padded[y0:y1, x0:x1])
    path = cache.path
    cache.close()
    assert not (tmp_path / path).exists() and list(tmp_path.iterdir()) == []


def test_lazy_image_decoded_to_a_file_cache_trains_like_numpy(data, tmp_path):
    import dask.array as da

    img, mask = data[0]
    a = run(_cfg([(img, mask)], tmp_path, steps=1, tile=64, out=str(tmp_path / "a.keras")))
    # A tiny budget puts the decoded pixels and labels in a file cache.
    lazy = da.from_array(img, chunks=(64, 64, 3))
    b = run(
        _cfg(
            [(lazy, mask)],
            tmp_path,
            steps=1,
            tile=64,
            out=str(tmp_path / "b.keras"),
            memory_gb=0.01,
            cache_dir=str(tmp_path),
        )
    )
    assert a[-1].result["loss"] == pytest.approx(b[-1].result["loss"], rel=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.keras", "b.keras"]


def test_a_pen_weight_changes_the_run_and_stays_tile_independent(data, tmp_path):
    """``pen_weight`` reaches the steps that draw pen strokes (the weights differ
    from the unweighted run's) and keeps the step the whole-image step (any tile)."""
    from napari_gigapixel.core.stain import draw_augmentation

    assert any(draw_augmentation(7, s, "pen", 240.0).pen is not None for s in range(3))
    finals = {}
    for name, tile, weight in (("plain", "auto", 1), ("w64", 64, 8), ("wauto", "auto", 8)):
        out = tmp_path / f"{name}.keras"
        run(_cfg(data, tmp_path, out=str(out), augment="pen", tile=tile, pen_weight=weight))
        finals[name] = _weights(out)[0]
    for a, b in zip(finals["w64"], finals["wauto"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(finals["plain"], finals["wauto"])) > 1e-4
