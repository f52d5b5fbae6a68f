"""Whole-slide augmentation: the HED stain map, tile consistency, exact streamed gradients."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from test_training_equivalence import _model, rel_err, whole_image_gradient  # noqa: E402

from napari_gigapixel.cli import build_parser  # noqa: E402
from napari_gigapixel.cli.train import build_config  # noqa: E402
from napari_gigapixel.core import _backend  # noqa: E402
from napari_gigapixel.core._augment_kernel import transform  # noqa: E402
from napari_gigapixel.core._pen import draw_pens, pen_cover  # noqa: E402
from napari_gigapixel.core._train_augment import SlideView  # noqa: E402
from napari_gigapixel.core._train_data import build_image_data  # noqa: E402
from napari_gigapixel.core.errors import GigapixelError  # noqa: E402
from napari_gigapixel.core.image_step import image_step  # noqa: E402
from napari_gigapixel.core.masks import AnnotationMask  # noqa: E402
from napari_gigapixel.core.stain import (  # noqa: E402
    INK_SCALE_RANGE,
    Augmentation,
    ColourJitter,
    InkRecolour,
    PenStrokes,
    apply_colour_numpy,
    apply_ink_numpy,
    augment_mode,
    auto_note,
    draw_augmentation,
    resolve_augment,
)
from napari_gigapixel.core.tiling import tile_grid  # noqa: E402
from napari_gigapixel.core.unet import model_geometry  # noqa: E402


def _dense(img, mask):
    """Training data of ``img`` with a dense mask at 1/4, cached in memory."""
    return build_image_data(
        img,
        AnnotationMask(mask, 4.0, "dense"),
        roi=None,
        kind="dense",
        output_stride=4,
        cache_in_memory=lambda n: True,
    )


def _image(shape, seed=1):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = 150 + 80 * np.sin(yy / 37.0)[..., None] * np.cos(xx / 53.0)[..., None] * [1, -0.6, 0.4]
    return np.clip(base + rng.normal(0, 25, shape + (3,)), 0, 255).astype(np.uint8)


def test_colour_map_is_skimage_hed_jitter_then_brightness_contrast():
    from skimage.color import hed2rgb, rgb2hed

    rng = np.random.default_rng(0)
    # Stain mixtures (non-negative H, E, DAB amounts), as slides hold them.
    rgb = np.rint(hed2rgb(rng.uniform(0, 0.08, (64, 64, 3))) * 255).astype(np.uint8)
    alpha, beta = np.array([1.08, 0.93, 1.05]), np.array([0.006, -0.004, 0.002])
    contrast, brightness = 1.1, -0.03
    hed = rgb2hed(rgb) * alpha + beta
    ref = (np.clip(hed2rgb(hed), 0, 1) - 0.5) * contrast + 0.5 + brightness
    ref = np.clip(np.rint(ref * 255), 0, 255)
    jit = ColourJitter.from_jitter(alpha, beta, contrast, brightness)
    # skimage clips negative amounts (rgb2hed) and intensities above 1
    # (hed2rgb); the map does neither (so no jitter is the identity): compare
    # where skimage clipped nothing.
    inside = np.all(rgb2hed(rgb) > 0, axis=-1) & np.all(hed2rgb(hed) <= 1, axis=-1)
    ours = apply_colour_numpy(rgb, jit).astype(int)
    assert inside.mean() > 0.5
    assert np.abs(ours - ref)[inside].max() <= 1
    assert np.abs(ours - rgb.astype(int)).mean() > 3  # it does change the colours
    # The fast XLA kernel: the same map in float32, within one grey level.
    fast = np.asarray(transform(rgb, Augmentation(0, False, jit))).astype(int)
    assert np.abs(fast - ours).max() <= 1 and (fast == ours).mean() > 0.999
    # The identity map leaves every value as it is.
    ident = ColourJitter.from_jitter(np.ones(3), np.zeros(3), 1.0, 0.0)
    assert np.array_equal(np.asarray(transform(rgb, Augmentation(0, False, ident))), rgb)


def test_modes_and_draws_are_fixed_by_seed_and_step():
    a, b = draw_augmentation(5, 3, "all"), draw_augmentation(5, 3, True)
    assert a == Augmentation(a.k, a.flip, a.colour) and a.k == b.k and a.flip == b.flip
    np.testing.assert_array_equal(a.colour.matrix, b.colour.matrix)
    flip, stain = draw_augmentation(5, 3, "flip"), draw_augmentation(5, 3, "stain")
    assert (flip.k, flip.flip, flip.colour) == (a.k, a.flip, None)
    assert (stain.k, stain.flip) == (0, False)
    np.testing.assert_array_equal(stain.colour.matrix, a.colour.matrix)
    assert draw_augmentation(5, 3, "none") == draw_augmentation(5, 3, False) == Augmentation()
    draws = {
        (d.k, d.flip, float(d.colour.gain))
        for d in map(lambda s: draw_augmentation(5, s, "all"), range(1, 20))
    }
    assert len(draws) > 10
    with pytest.raises(GigapixelError, match="augment must be one of"):
        augment_mode("strong")


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_tiles_of_the_transformed_slide_are_the_transformed_tiles(k, flip):
    """A turn with a transpose in it is read as the turned slide's transpose (a
    mirror of the slide); the step runs it with transposed kernels."""
    # 516 x 1300: a multiple of the output stride (so it may turn), not of S.
    img = _image((516, 1300))
    data = _dense(img, np.ones((129, 325), np.uint8))
    aug = Augmentation(k, flip, draw_augmentation(2, 7, "stain").colour)
    whole = np.asarray(transform(img, aug))
    view = SlideView(data, 4, aug)
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    turned = np.rot90(a, k)[:, ::-1] if flip else np.rot90(a, k)
    assert view.transposed == (k % 2 == 1)
    if view.transposed:
        whole = whole.swapaxes(0, 1)
        turned = turned.T
    mirror = transform(np.repeat(a[..., None], 3, -1), Augmentation(view.k, view.flip))
    assert view.k in (0, 2) and np.array_equal(turned, np.asarray(mirror)[..., 0])
    assert view.shape == whole.shape[:2] == img.shape[:2]
    for core in (224,):
        for tile in tile_grid(view.shape, core, 32, 32):
            y0, y1, x0, x1 = tile.window
            got = np.asarray(view.window(tile.window))
            want = np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
            part = whole[y0:y1, x0:x1]
            want[: part.shape[0], : part.shape[1]] = part
            assert np.array_equal(got, want), (k, flip, core, tile)


def test_a_step_transforms_each_window_once_within_its_memo_budget(monkeypatch):
    """Dice's forward pass and the gradient pass read the same windows: the second
    read is the first's tensor, up to ``MEMO_BYTES``; past it, windows are redone."""
    import napari_gigapixel.core._augment_kernel as kernel

    img = _image((516, 1300))
    data = _dense(img, np.ones((129, 325), np.uint8))
    calls = []
    real = kernel.transform

    def counting(block, aug, shape=None, *rest, **kw):
        calls.append(shape)
        return real(block, aug, shape, *rest, **kw)

    monkeypatch.setattr(kernel, "transform", counting)
    aug = Augmentation(1, True, draw_augmentation(2, 7, "stain").colour)
    wins = [t.window for t in tile_grid(SlideView(data, 4, aug).shape, 224, 32, 32)]
    view = SlideView(data, 4, aug)
    first = [np.asarray(view.window(w)) for w in wins]
    again = [np.asarray(view.window(w)) for w in wins]
    assert len(calls) == len(wins)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # A budget of one window: only the first is kept, every other is redone.
    one = (wins[0][1] - wins[0][0]) * (wins[0][3] - wins[0][2]) * 3
    monkeypatch.setattr(SlideView, "MEMO_BYTES", one)
    calls.clear()
    view = SlideView(data, 4, aug)
    redo = [np.asarray(view.window(w)) for w in wins + wins]
    assert len(calls) == 2 * len(wins) - 1
    assert all(np.array_equal(a, b) for a, b in zip(first + first, redo))


def test_the_colour_map_is_one_table_per_map_shared_by_every_window(monkeypatch):
    """The map is computed once per step for all 2**24 colours; windows look it up."""
    import napari_gigapixel.core._augment_kernel as kernel

    builds = []
    real = kernel._colour_table_kernel

    def counting():
        fn = real()

        def run(m, b):
            builds.append(1)
            return fn(m, b)

        return run

    monkeypatch.setattr(kernel, "_colour_table_kernel", counting)
    monkeypatch.delitem(kernel._FUNCS, "table", raising=False)
    img = _image((516, 1300))
    data = _dense(img, np.ones((129, 325), np.uint8))
    aug = Augmentation(0, False, draw_augmentation(2, 7, "stain").colour)
    view = SlideView(data, 4, aug)
    for tile in tile_grid(view.shape, 224, 32, 32):
        view.window(tile.window)
    assert len(builds) == 1
    # Every colour of the table is the float64 map of that colour within a grey level.
    table = np.asarray(kernel.colour_table(aug.colour))
    assert len(builds) == 1 and table.shape == (1 << 24, 3)
    idx = np.random.default_rng(0).integers(0, 1 << 24, 4096)
    rgb = np.stack([idx >> 16, (idx >> 8) & 255, idx & 255], -1).astype(np.uint8)
    ref = apply_colour_numpy(rgb, aug.colour).astype(int)
    assert np.abs(table[idx].astype(int) - ref).max() <= 1
    # The next step's map is a new table.
    kernel.colour_table(draw_augmentation(2, 8, "stain").colour)
    assert len(builds) == 2


def _augmented_reference(img, data, aug):
    """The augmented slide and its labels as a plain image (the whole-image step's input)."""
    ho, wo = data.labels.shape
    lab = data.labels.read(0, ho, 0, wo)
    background = (lab == 0).view(np.uint8)  # dense codes: 0 background, 1 tissue
    lab = np.rot90(lab, aug.k)
    lab = lab[:, ::-1] if aug.flip else lab
    return _dense(
        np.ascontiguousarray(
            np.asarray(transform(img, aug, None, background, 4, place=((0, 0), img.shape[:2])))
        ),
        np.ascontiguousarray(lab),
    )


@pytest.mark.parametrize(
    "shape,loss", [((517, 1301), "dice+bce"), ((516, 1300), "dice+bce"), ((516, 1300), "bce")]
)
def test_streamed_equals_whole_gradient_with_augmentation_float64(shape, loss):
    img = _image(shape, seed=3)
    rng = np.random.default_rng(4)
    mask = (rng.random((-(-shape[0] // 4), -(-shape[1] // 4))) < 0.4).astype(np.uint8)
    data = _dense(img, mask)
    model = _model(4)
    geo = model_geometry(model)
    aug = Augmentation(1, True, draw_augmentation(0, 11, "stain").colour)
    view = SlideView(data, 4, aug)
    # An odd-sized slide is not turned (its partial output pixels would move);
    # the colour map still applies.
    assert (view.aug.k, view.aug.flip) == ((0, False) if shape[0] % 4 else (1, True))
    assert view.transposed == (shape[0] % 4 == 0)
    ref_data = _augmented_reference(img, data, view.aug)
    ref, ref_loss = whole_image_gradient(model, ref_data, loss, 4)
    plain, _ = whole_image_gradient(model, data, loss, 4)
    assert rel_err(plain, ref) > 1e-3  # the augmentation does change the step
    step = _backend.TileStep(model, 1)
    for core in (320,):
        tiles = tile_grid(view.shape, core, geo.halo, geo.stride)
        res = image_step(step, view, tiles, geo, loss, data.n_labelled, 1)
        assert len(tiles) > 2
        assert rel_err(res.grads, ref) < 1e-10, (shape, loss, core)
        assert res.loss == pytest.approx(ref_loss, rel=1e-10)


def test_a_turned_step_transposes_kernels_inside_it_only():
    """The step of a turned slide runs on transposed kernels and puts the model's
    own back when it ends, also when it is stopped between two tiles."""
    from napari_gigapixel.core.events import JobStopped
    from napari_gigapixel.core.image_step import iter_image_step

    img = _image((516, 1300), seed=3)
    data = _dense(img, (np.random.default_rng(1).random((129, 325)) < 0.4).astype(np.uint8))
    model = _model(4)
    geo = model_geometry(model)
    before = [v.numpy().copy() for v in model.trainable_variables]
    step = _backend.TileStep(model, 1)
    view = SlideView(data, 4, Augmentation(3, False))  # transpose of a mirror
    assert view.transposed
    tiles = tile_grid(view.shape, 320, geo.halo, geo.stride)
    seen = []

    class StopAfterOne:
        def is_set(self):
            kernel = model.get_layer("enc2").kernel.numpy()
            seen.append(np.array_equal(kernel, np.swapaxes(before_enc2, 0, 1)))
            return len(seen) > 1

    before_enc2 = model.get_layer("enc2").kernel.numpy().copy()
    assert not np.array_equal(before_enc2, np.swapaxes(before_enc2, 0, 1))
    gen = iter_image_step(
        step, view, tiles, geo, "dice+bce", data.n_labelled, 1, stop=StopAfterOne()
    )
    with pytest.raises(JobStopped):
        for _ in gen:
            pass
    assert seen == [True, True]  # inside the step: the transposed kernels
    for v, b in zip(model.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def _ink(seed: int = 0) -> InkRecolour:
    for step in range(50):
        aug = draw_augmentation(seed, step, "ink", 240.0)
        if aug.ink is not None:
            return aug.ink
    raise AssertionError("no ink in 50 steps")


def test_ink_recolours_dark_background_pixels_only():
    rng = np.random.default_rng(0)
    img = np.clip(240 + rng.normal(0, 2, (64, 96, 3)), 0, 255).astype(np.uint8)  # glass
    img[8:20, 8:40] = (60, 160, 90)  # green pen on the glass
    img[32:48, 48:88] = (120, 80, 60)  # dark tissue
    img[40:44, 8:32] = (200, 60, 170)  # pen over tissue (labelled tissue)
    lab = np.zeros((16, 24), np.uint8)
    lab[32 // 4 : 48 // 4, 48 // 4 : 88 // 4] = 1
    lab[40 // 4 : 44 // 4, 8 // 4 : 32 // 4] = 1
    background = lab == 0
    ink = _ink()
    fast = np.asarray(transform(img, Augmentation(ink=ink), None, background.view(np.uint8), 4))
    full = np.repeat(np.repeat(background, 4, 0), 4, 1)
    ref = apply_ink_numpy(img, full, ink)
    assert int(np.abs(fast.astype(int) - ref).max()) <= 1
    changed = np.abs(fast.astype(int) - img).max(axis=-1) > 2
    assert changed[8:20, 8:40].all()  # the pen on the glass took the ink
    assert not changed[32:48, 48:88].any() and not changed[40:44, 8:32].any()
    assert not changed[full & ~changed].any() and changed.mean() < 0.1  # glass stays
    # Same darkness (up to the scale), the ink's colour: OD along the direction.
    od = -np.log(fast[14, 20].astype(float) / 240.0)
    np.testing.assert_allclose(od / np.linalg.norm(od), ink.direction, atol=0.05)


@pytest.mark.parametrize("shape", [(336, 352), (331, 349)])
def test_ink_by_blocks_equals_the_ink_on_every_block(shape):
    """The ink recolours only the blocks its integer test flags. Each colour
    near the test's cut (every mix of channels within a few grey levels of
    it, where the ink's own norm crosses its threshold) sits alone in a block
    of glass, so a cut one grey level too tight would leave one unrecoloured:
    the result equals recolouring every block of the window, also for a
    window off the block grid (a clipped edge window)."""
    from napari_gigapixel.core._augment_kernel import apply_ink, ink_blocks, ink_cut

    rng = np.random.default_rng(3)
    img = np.clip(238 + rng.normal(0, 1, shape + (3,)), 0, 255).astype(np.uint8)
    img[5:11, 7:40] = (60, 160, 90)  # pen
    ink = _ink()
    cut = ink_cut(ink)
    near = np.arange(cut - 4, cut + 2)
    mixes = np.stack(np.meshgrid(near, near, near, indexing="ij"), -1).reshape(-1, 3)
    centres = [(y, x) for y in range(24, shape[0] - 8, 16) for x in range(8, shape[1] - 8, 16)]
    assert len(centres) >= len(mixes)
    for (y, x), mix in zip(centres, mixes):
        img[y, x] = mix
    background = np.ones((-(-shape[0] // 4), -(-shape[1] // 4)), np.uint8)
    background[-8:, :4] = 0  # some tissue: never recoloured
    t0 = (background.shape[0] - 8) * 4
    img[t0:, :16] = (90, 40, 80)
    every = np.argwhere(np.ones((-(-shape[0] // 16), -(-shape[1] // 16)), bool))
    full = apply_ink(img.copy(), background, 4, ink, every)
    changed = (full != img).any(axis=-1)
    assert changed[5:11, 7:40].all() and not changed[t0:, :16].any()
    took = [changed[y, x] for (y, x), _ in zip(centres, mixes)]
    assert 0 < sum(took) < len(mixes)  # the sweep straddles the threshold
    blocks = ink_blocks(img, background, 4, ink)
    assert len(blocks) < len(every)
    np.testing.assert_array_equal(apply_ink(img.copy(), background, 4, ink, blocks), full)
    full_bg = np.repeat(np.repeat(background > 0, 4, 0), 4, 1)[: shape[0], : shape[1]]
    ref = apply_ink_numpy(img, full_bg, ink)
    assert int(np.abs(full.astype(int) - ref).max()) <= 1


def test_a_run_keeps_each_windows_ink_blocks_until_the_labels_change():
    img = _image((256, 320), seed=9)
    img[:64] = 238
    img[20:30, 40:200] = (40, 40, 160)  # pen on the glass
    mask = np.ones((64, 80), np.uint8)
    mask[:16] = 0
    data = _dense(img, mask)
    inks = [i for i in (draw_augmentation(5, s, "ink", 240.0).ink for s in range(30)) if i]
    win = (0, 128, 0, 160)
    first = np.asarray(SlideView(data, 4, Augmentation(ink=inks[0])).window(win))
    assert len(data.ink_index) == 1
    (blocks,) = data.ink_index.values()
    second = np.asarray(SlideView(data, 4, Augmentation(ink=inks[1])).window(win))
    assert len(data.ink_index) == 1 and next(iter(data.ink_index.values())) is blocks
    data.ink_index.clear()  # recomputed: the same result
    again = np.asarray(SlideView(data, 4, Augmentation(ink=inks[1])).window(win))
    np.testing.assert_array_equal(again, second)
    assert (first != second).any() and (first != img[:128, :160]).any()
    data.exclude((0, 0, 32, 32), 4)
    assert data.ink_index == {}


def test_ink_draws_and_its_white_balance_requirement():
    from napari_gigapixel.core.train_config import _validate
    from napari_gigapixel.core.training import TrainConfig, TrainConfigError

    draws = [draw_augmentation(3, s, "ink", 240.0) for s in range(40)]
    on = [d.ink for d in draws if d.ink is not None]
    assert 10 < len(on) < 30  # about half the steps
    assert all((d.k, d.flip, d.colour) == (0, False, None) for d in draws)
    assert len({tuple(np.round(i.direction, 6)) for i in on}) == len(on)
    for i in on:
        assert np.all(i.direction >= 0) and abs(np.linalg.norm(i.direction) - 1) < 1e-9
    # The other modes draw what they drew before the ink existed.
    assert draw_augmentation(3, 5, "all", 240.0).k == draw_augmentation(3, 5, "flip").k
    assert all(draw_augmentation(3, s, "all").ink is None for s in range(20))  # no white
    assert min(i.scale for i in on) < 0.7 and max(i.scale for i in on) > 1.0
    assert all(INK_SCALE_RANGE[0] <= i.scale <= INK_SCALE_RANGE[1] for i in on)
    cfg = TrainConfig(images=["a.tif"], masks=["m.tif"], augment="ink", white_balance=False)
    with pytest.raises(TrainConfigError, match="needs white_balance"):
        _validate(cfg)


def test_auto_augment_is_the_ink_and_pen_on_white_balanced_runs_only():
    """The recipe's default: the ink and pen strokes where the glass is balanced to its
    white, nothing where it is not (so --no-white-balance, or resuming an unbalanced checkpoint, is
    not refused, and draws nothing instead of an ink measured against no white)."""
    from napari_gigapixel.core.train_config import _validate
    from napari_gigapixel.core.training import TrainConfig

    assert TrainConfig().augment == "auto"
    assert resolve_augment("auto", True) == "pen" and resolve_augment("auto", False) == "none"
    inks = pens = 0
    for s in range(12):
        auto, pen = draw_augmentation(3, s, "auto", 240.0), draw_augmentation(3, s, "pen", 240.0)
        assert (auto.k, auto.flip, auto.colour) == (0, False, None)
        assert (auto.ink is None) == (pen.ink is None) and (auto.pen is None) == (pen.pen is None)
        if pen.ink is not None:
            inks += 1
            np.testing.assert_array_equal(auto.ink.direction, pen.ink.direction)
            assert (auto.ink.scale, auto.ink.white) == (pen.ink.scale, pen.ink.white)
        if pen.pen is not None:
            pens += 1
            np.testing.assert_array_equal(auto.pen.ods, pen.pen.ods)
        assert draw_augmentation(3, s, "auto") == Augmentation()
    assert inks > 0 and pens > 0
    assert "strokes" in auto_note("auto", True) and "none" in auto_note("auto", False)
    assert auto_note("ink", True) is None and auto_note(False, True) is None
    _validate(TrainConfig(images=["a.tif"], masks=["m.tif"], white_balance=False))


def test_pen_flip_is_pen_with_the_turns_and_flips_of_flip():
    """ "pen+flip": the ink and pen strokes "pen" draws for the step, turned and flipped
    as "flip" turns and flips it; it needs white balance as "pen" does."""
    from napari_gigapixel.core.train_config import TrainConfigError, _validate
    from napari_gigapixel.core.training import TrainConfig

    turns = set()
    for s in range(16):
        both = draw_augmentation(3, s, "pen+flip", 240.0)
        pen, geo = draw_augmentation(3, s, "pen", 240.0), draw_augmentation(3, s, "flip")
        assert (both.k, both.flip, both.colour) == (geo.k, geo.flip, None)
        assert repr((both.ink, both.pen)) == repr((pen.ink, pen.pen))
        turns.add((both.k, both.flip))
    assert len(turns) > 3
    cfg = TrainConfig(images=["a.tif"], masks=["m.tif"], augment="pen+flip", white_balance=False)
    with pytest.raises(TrainConfigError, match="'pen\\+flip' needs white_balance"):
        _validate(cfg)


def _pens() -> PenStrokes:
    """Two strokes across a slide: a bent blue one and a straight black one."""
    return PenStrokes(
        starts=np.array([[0.1, 0.05], [0.9, 0.5]]),
        steps=(np.array([[0.5, 0.8], [-0.3, 0.9]]), np.array([[-0.7, 0.6]])),
        widths=np.array([0.06, 0.04]),
        ods=np.array([[0.9, 0.6, 0.1], [0.8, 0.8, 0.8]]),
    )


def test_pen_strokes_go_on_the_glass_only_and_every_tiling_draws_the_same():
    """The strokes darken only pixels the mask labels background, along their
    centre lines, and any window of the drawn slide is the drawn window."""
    shape = (200, 330)
    img = np.clip(238 + np.random.default_rng(1).normal(0, 2, shape + (3,)), 0, 255)
    img = img.astype(np.uint8)
    mask = np.zeros((50, 83), np.uint8)
    mask[10:40, 40:70] = 1  # tissue, which the strokes cross
    img[40:160, 160:280] = (150, 90, 160)
    data = _dense(img, mask)
    aug = Augmentation(pen=_pens())
    whole = np.asarray(SlideView(data, 4, aug).window((0, 200, 0, 330)))
    changed = (whole != img).any(axis=-1)
    tissue = np.repeat(np.repeat(mask > 0, 4, 0), 4, 1)[:200, :330]
    assert changed.mean() > 0.03 and not changed[tissue].any()
    assert (whole <= img).all()  # ink absorbs: never lighter
    # The first stroke's first segment passes through (0.1 + 0.25) * 200 = 70,
    # 0.05 * 330 + 0.4 * 200 = 96.5 (its midpoint), on the glass.
    assert changed[68:72, 94:99].all()
    tiled = np.zeros_like(whole)
    for y0, y1 in ((0, 64), (48, 128), (120, 200)):
        for x0, x1 in ((0, 100), (96, 236), (228, 330)):
            tiled[y0:y1, x0:x1] = np.asarray(SlideView(data, 4, aug).window((y0, y1, x0, x1)))
    np.testing.assert_array_equal(tiled, whole)


def test_an_odd_sized_slide_is_not_turned_but_keeps_its_ink_and_pen():
    img = _image((517, 1301), seed=2)
    mask = np.zeros((130, 326), np.uint8)
    mask[60:80, 100:140] = 1
    data = _dense(img, mask)
    view = SlideView(data, 4, Augmentation(1, True, None, _ink(), _pens()))
    assert (view.geometric, view.shape) == (False, (517, 1301))
    assert view.aug.ink is not None and view.aug.pen is not None
    out = np.asarray(view.window((0, 517, 0, 1301)))
    assert (out != img).any(axis=-1).mean() > 0.05  # the strokes are on it


def test_pen_mode_draws_the_ink_and_strokes_on_half_the_steps():
    from napari_gigapixel.core.train_config import _validate
    from napari_gigapixel.core.training import TrainConfig, TrainConfigError

    draws = [draw_augmentation(3, s, "pen", 240.0) for s in range(40)]
    assert 10 < sum(d.pen is not None for d in draws) < 30
    for s, d in enumerate(draws):
        ink = draw_augmentation(3, s, "ink", 240.0).ink
        assert (d.ink is None) == (ink is None) and (d.k, d.flip, d.colour) == (0, False, None)
        if ink is not None:
            np.testing.assert_array_equal(d.ink.direction, ink.direction)
    pens = [d.pen for d in draws if d.pen is not None]
    assert all(1 <= len(p.starts) <= 3 and len(p.steps) == len(p.starts) for p in pens)
    assert all(np.all(p.ods >= 0) for p in pens)
    assert all(draw_augmentation(3, s, "all", 240.0).pen is None for s in range(20))
    cfg = TrainConfig(images=["a.tif"], masks=["m.tif"], augment="pen", white_balance=False)
    with pytest.raises(TrainConfigError, match="'pen' needs white_balance"):
        _validate(cfg)


#: A pen weight for the tests (``TrainConfig.pen_weight``).
PEN_WEIGHT = 8


def _pen_weighted(data, pens, original=None, k=0, flip=False):
    """``data`` whose whole label map weighs the background under ``pens`` by
    PEN_WEIGHT, computed once over the whole slide (the reference for tiles).

    ``data`` turned ``k`` times and flipped from ``original``: the strokes are
    drawn on the original slide, so their cover is found there and turned too.
    """
    ho, wo = data.labels.shape
    y, w = data.labels_yw(0, ho, 0, wo)
    src = original if original is not None else data
    sh, sw = src.labels.shape
    cover = np.rot90(pen_cover(pens, src.shape, 4, (0, sh, 0, sw)), k)
    cover = cover[:, ::-1] if flip else cover
    under = cover & (y == 0) & (w > 0)
    w = np.where(under, PEN_WEIGHT, w).astype(np.uint8)
    assert under.sum() > 20
    return SimpleNamespace(
        shape=data.shape,
        image=data.image,
        labels=data.labels,
        n_labelled=data.n_labelled,
        labels_yw=lambda y0, y1, x0, x1: (y[y0:y1, x0:x1], w[y0:y1, x0:x1]),
    )


def test_pen_cover_is_what_the_strokes_darken_in_any_window():
    """An output pixel is under a stroke where the stroke darkens its centre's
    pixels; any window of the cover is the whole cover's window."""
    shape = (400, 1200)
    pens = _pens()
    src = np.full(shape + (3,), 236, np.uint8)
    draw_pens(src, np.ones((100, 300), np.uint8), 4, (0, 0), pens, shape)
    cover = pen_cover(pens, shape, 4, (0, 100, 0, 300))
    # The pixel just below-right of each output pixel's centre (2, 2 of its block).
    centre = (src[2::4, 2::4] < 236).any(axis=-1)
    assert cover.mean() > 0.05
    assert (cover != centre).mean() < 0.01  # only where a stroke's edge passes a centre
    darkened = (src < 236).any(axis=-1).reshape(100, 4, 300, 4).mean(axis=(1, 3))
    assert (darkened[cover] > 0).all() and not (darkened[~cover] > 0.5).any()
    for rect in ((0, 37, 0, 300), (37, 100, 101, 250), (90, 100, 290, 300)):
        np.testing.assert_array_equal(
            pen_cover(pens, shape, 4, rect), cover[rect[0] : rect[1], rect[2] : rect[3]]
        )


@pytest.mark.parametrize("k,flip", [(0, False), (2, False), (0, True), (2, True)])
def test_background_under_the_pen_weighs_more_in_the_loss(k, flip):
    """With a pen weight, the step's labels weigh background under a drawn stroke
    that much (tissue and unlabelled pixels keep theirs), mirrored with the slide;
    without one (the default) the strokes are drawn but weigh as any glass."""
    img = _image((400, 1200), seed=3)
    mask = np.zeros((100, 300), np.uint8)
    mask[20:70, 40:160] = 1
    data = _dense(img, mask)
    pens = _pens()
    assert data.pen_weight == 1
    _, w1 = SlideView(data, 4, Augmentation(pen=pens)).labels(0, 100, 0, 300)
    assert (w1 == 1).all()
    data.pen_weight = PEN_WEIGHT
    plain = SlideView(data, 4, Augmentation(pen=pens)).labels(0, 100, 0, 300)
    y, w = plain
    under = pen_cover(pens, (400, 1200), 4, (0, 100, 0, 300))
    np.testing.assert_array_equal(w == PEN_WEIGHT, under & (mask == 0))
    assert (w[~(under & (mask == 0))] == 1).all() and (w == PEN_WEIGHT).sum() > 100
    view = SlideView(data, 4, Augmentation(k, flip, None, None, pens))
    assert not view.transposed
    my, mw = view.labels(0, 100, 0, 300)
    ref_y, ref_w = (np.rot90(a, k) for a in plain)
    if flip:
        ref_y, ref_w = ref_y[:, ::-1], ref_w[:, ::-1]
    np.testing.assert_array_equal(my, ref_y)
    np.testing.assert_array_equal(mw, ref_w)
    # A tile's labels are the whole map's window.
    np.testing.assert_array_equal(view.labels(30, 77, 120, 260)[1], mw[30:77, 120:260])


@pytest.mark.parametrize("part", ["ink", "pen", "pen+flip"])
def test_streamed_equals_whole_gradient_with_ink_or_pen_float64(part):
    """The ink (with a turn and flip) and the pen strokes (on top of the ink, and
    turned and flipped with it: "pen+flip") keep the streamed step the whole-image
    step of the augmented slide; ``without`` is the same augmentation less the part
    under test, which must change the step."""
    if part == "ink":
        aug, without = Augmentation(1, True, None, _ink(2)), Augmentation(1, True)
    elif part == "pen":
        aug, without = Augmentation(0, False, None, _ink(2), _pens()), Augmentation(ink=_ink(2))
    else:
        aug = Augmentation(3, True, None, _ink(2), _pens())
        without = Augmentation(3, True, None, _ink(2))
    shape = (516, 1300)
    img = _image(shape, seed=5)
    rng = np.random.default_rng(6)
    mask = (rng.random((shape[0] // 4, shape[1] // 4)) < 0.4).astype(np.uint8)
    data = _dense(img, mask)
    model = _model(4)
    geo = model_geometry(model)
    view = SlideView(data, 4, aug)
    ref_data = _augmented_reference(img, data, view.aug)
    if part != "ink":  # the strokes' glass weighed too (TrainConfig.pen_weight)
        data.pen_weight = PEN_WEIGHT
        ref_data = _pen_weighted(ref_data, view.aug.pen, data, view.aug.k, view.aug.flip)
    ref, ref_loss = whole_image_gradient(model, ref_data, "dice+focal", 4)
    plain, _ = whole_image_gradient(
        model, _augmented_reference(img, data, without), "dice+focal", 4
    )
    assert rel_err(plain, ref) > 1e-3  # the part under test does change the step
    step = _backend.TileStep(model, 1, "dice+focal")
    tiles = tile_grid(view.shape, 320, geo.halo, geo.stride)
    res = image_step(step, view, tiles, geo, "dice+focal", data.n_labelled, 1)
    assert len(tiles) > 2
    assert rel_err(res.grads, ref) < 1e-10
    assert res.loss == pytest.approx(ref_loss, rel=1e-10)


@pytest.mark.parametrize(
    "flag,mode",
    [
        ([], "auto"),
        (["--augment", "none"], "none"),
        (["--augment"], "all"),
        (["--augment", "stain"], "stain"),
        (["--augment", "ink"], "ink"),
        (["--augment", "pen+flip"], "pen+flip"),
    ],
)
def test_cli_augment_flag(flag, mode):
    args = build_parser().parse_args(
        ["train", "--image", "s.tif", "--mask", "m.tif", "--out", "m.keras", *flag]
    )
    assert build_config(args).augment == mode


def test_cli_rejects_an_unknown_augment_mode(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(
            ["train", "--image", "s", "--mask", "m", "--out", "m.keras", "--augment", "strong"]
        )
    assert exc.value.code == 2 and "invalid choice: 'strong'" in capsys.readouterr().err


def test_stain_jitter_of_white_balanced_slides_keeps_the_glass_white():
    """With white balance on, the glass stays where the balance puts it (WHITE) under
    every step's colour map, while stained pixels change; without it, the map also
    shifts the glass (stain shift, brightness, contrast)."""
    from napari_gigapixel.core.input_norm import WHITE

    glass = np.full((1, 1, 3), int(WHITE), np.uint8)
    tissue = np.array([[[150, 90, 160]]], np.uint8)
    moved = 0
    for step in range(20):
        aug = draw_augmentation(0, step, "stain", keep_white=WHITE)
        assert np.array_equal(apply_colour_numpy(glass, aug.colour), glass)
        assert np.array_equal(np.asarray(transform(glass, aug)), glass)
        moved += int(np.abs(apply_colour_numpy(tissue, aug.colour).astype(int) - tissue).max() > 2)
    assert moved >= 10
    plain = [draw_augmentation(0, s, "stain").colour for s in range(20)]
    assert (
        max(np.abs(apply_colour_numpy(glass, c).astype(int) - int(WHITE)).max() for c in plain) > 5
    )
