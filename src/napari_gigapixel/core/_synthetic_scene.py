"""Scene tables and per-window rendering of the synthetic slides (see :mod:`.synthetic`).

Everything here is an element-wise function of absolute level-0
coordinates, so any window, whatever its tiling, gives the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_MEDIUM_FACTOR = 16  # level-0 pixels per medium-grid cell
_MEDIUM_MAX = 4096  # medium grid cells per axis at most (it wraps past 65,536 px)
_FINE_SIZE = 2048  # fine texture period in pixels

# Ruifrok & Johnston optical-density vectors (R, G, B) of the two stains.
_HEMA = np.array([0.65, 0.70, 0.29], np.float32)
_EOSIN = np.array([0.07, 0.99, 0.11], np.float32)


# --------------------------------------------------------------------------
# Scene: everything that depends on (shape, seed) only
# --------------------------------------------------------------------------


def _noise(rng: np.random.Generator, shape: tuple[int, int], corr: float) -> np.ndarray:
    """Gaussian-filtered white noise (periodic on ``shape``), unit std, float32.

    ``corr`` is the correlation length in grid cells.
    """
    white = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    spectrum = np.fft.rfft2(white) * np.exp(-2 * (np.pi * corr) ** 2 * (fy**2 + fx**2))
    out = np.fft.irfft2(spectrum, s=shape)
    out -= out.mean()
    out /= out.std() + 1e-12
    return out.astype(np.float32)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


@dataclass(frozen=True)
class _Scene:
    shape: tuple[int, int]
    large_factor: int
    large: np.ndarray  # (4, gh, gw): tissue field, stain strength, pen alpha, -log(illum)
    medium: np.ndarray  # (3, gy, gx) periodic: edge perturbation, gap field, nucleus density
    fibre: np.ndarray  # (F, F) float32 periodic stroma texture
    nuc_u: np.ndarray  # (F, F) uint8: rank of the nucleus covering the pixel, 255 = none
    nuc_p: np.ndarray  # (F, F) float32 nucleus profile in [0, 1]
    background: np.ndarray  # (3,) glass RGB
    eosin: np.ndarray  # (3,) eosin OD vector (stain varies per seed)
    hema: np.ndarray  # (3,) haematoxylin OD vector
    eosin_conc: float
    hema_conc: float
    faint: float  # stain strength at the tissue edge
    pen_od: np.ndarray  # (3,) OD of the pen ink
    objects: np.ndarray  # (n, 6): y, x, radius, kind (0 bubble, 1 dust), darkness, reach


def _large_factor(shape: tuple[int, int]) -> int:
    factor = 16
    while (shape[0] / factor) * (shape[1] / factor) > 2_000_000:
        factor *= 2
    return factor


def _make_large(rng: np.random.Generator, shape: tuple[int, int], factor: int) -> np.ndarray:
    gh, gw = -(-shape[0] // factor), -(-shape[1] // factor)
    yy, xx = np.meshgrid(np.arange(gh) + 0.5, np.arange(gw) + 0.5, indexing="ij")
    short = min(gh, gw)
    # Several elliptical blobs of tissue, spread along the long axis.
    n_blobs = int(rng.integers(3, 7))
    field = np.full((gh, gw), -1.0)
    for _ in range(n_blobs):
        ry = short * rng.uniform(0.15, 0.32)
        rx = ry * rng.uniform(0.7, 1.8)
        cy = rng.uniform(0.2, 0.8) * gh
        cx = rng.uniform(0.1, 0.9) * gw
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(theta) + dx * np.sin(theta)) / ry
        v = (-dy * np.sin(theta) + dx * np.cos(theta)) / rx
        field = np.maximum(field, 1.0 - (u * u + v * v))
    field = (
        field + 0.45 * _noise(rng, (gh, gw), short / 8) + 0.2 * _noise(rng, (gh, gw), short / 25)
    )
    # Keep a margin of glass around the slide's border.
    edge = np.minimum(np.minimum(yy, gh - yy), np.minimum(xx, gw - xx)) / short
    field = field - 1.5 * _smoothstep(1 - edge / 0.08)
    coverage = rng.uniform(0.40, 0.56)
    threshold = np.quantile(field, 1 - coverage)
    tissue = (field - threshold) / (np.std(field) + 1e-9)
    # Stain strength varies slowly over the slide (one blob may be pale).
    stain = 0.9 + 0.18 * _noise(rng, (gh, gw), short / 5)
    # Pen marks: thin ridges of a noise field, inside a few random disks.
    ridge = np.abs(_noise(rng, (gh, gw), short / 5))
    envelope = np.zeros((gh, gw))
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(0.05, 0.95) * gh, rng.uniform(0.05, 0.95) * gw
        radius = short * rng.uniform(0.15, 0.4)
        dist = np.hypot(yy - cy, xx - cx) / radius
        envelope = np.maximum(envelope, _smoothstep((1 - dist) / 0.3))
    width = rng.uniform(0.05, 0.1)
    pen = _smoothstep((width - ridge) / (0.5 * width)) * envelope * rng.uniform(0.6, 0.95)
    illum = 0.015 * _noise(rng, (gh, gw), short / 3)
    return np.stack([tissue, stain, pen, illum]).astype(np.float32)


def _medium_size(shape: tuple[int, int]) -> tuple[int, int]:
    gy = min(-(-shape[0] // _MEDIUM_FACTOR), _MEDIUM_MAX)
    gx = min(-(-shape[1] // _MEDIUM_FACTOR), _MEDIUM_MAX)
    # At least 256 cells so the noise has room for its correlation lengths;
    # FFT noise is periodic on its grid, so wrapping never shows a seam.
    return max(gy, 256), max(gx, 256)


def _make_medium(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    perturb = _noise(rng, size, 6.0)
    hole = _noise(rng, size, 14.0) - rng.uniform(2.4, 2.9)
    fat = _noise(rng, size, 9.0) - rng.uniform(2.0, 2.5)
    tear_line = 0.06 - np.abs(_noise(rng, size, 40.0))
    tear_gate = _noise(rng, size, 50.0) - 1.0
    tear = np.minimum(tear_line * 10, tear_gate)
    gap = np.maximum(np.maximum(hole, fat), tear)
    density = 0.10 + 0.22 * _smoothstep(0.5 + 0.35 * _noise(rng, size, 20.0))
    return np.stack([perturb, gap, density]).astype(np.float32)


def _make_fine(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = _FINE_SIZE
    # Fibres: band-pass noise stretched along a random direction.
    white = rng.standard_normal((n, n))
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    theta = rng.uniform(0, np.pi)
    along = fy * np.cos(theta) + fx * np.sin(theta)
    across = -fy * np.sin(theta) + fx * np.cos(theta)
    radial = np.hypot(along * 3.0, across)
    spectrum = np.exp(-(((radial - 1 / 14) / (1 / 30)) ** 2))
    fibre = np.fft.irfft2(np.fft.rfft2(white) * spectrum, s=(n, n))
    fibre = (fibre / (fibre.std() + 1e-12)).astype(np.float32)
    # Nuclei: soft dots with a random rank each; a pixel shows its nucleus
    # when the rank is below the local density, so density varies smoothly.
    n_dots = n * n // 80
    cy = rng.uniform(0, n, n_dots).astype(np.float32)
    cx = rng.uniform(0, n, n_dots).astype(np.float32)
    radius = rng.uniform(2.5, 5.5, n_dots).astype(np.float32)
    rank = rng.integers(0, 255, n_dots).astype(np.uint8)
    span = np.arange(-6, 7, dtype=np.float32)
    oy, ox = np.meshgrid(span, span, indexing="ij")
    py = np.floor(cy)[:, None] + oy.ravel()[None, :]
    px = np.floor(cx)[:, None] + ox.ravel()[None, :]
    dist = np.hypot(py + 0.5 - cy[:, None], px + 0.5 - cx[:, None]) / radius[:, None]
    inside = dist < 1
    flat = ((py.astype(np.int64) % n) * n + (px.astype(np.int64) % n))[inside]
    nuc_u = np.full(n * n, 255, np.uint8)
    nuc_p = np.zeros(n * n, np.float32)
    nuc_u[flat] = np.broadcast_to(rank[:, None], inside.shape)[inside]
    nuc_p[flat] = np.sqrt(1 - dist[inside] ** 2)
    return fibre, nuc_u.reshape(n, n), nuc_p.reshape(n, n)


def _make_objects(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    area_scale = h * w / 67e6
    short = min(h, w)
    n_bubbles = int(rng.integers(2, 6) * max(1.0, area_scale**0.5))
    n_dust = int(rng.integers(20, 40) * max(0.05, area_scale) * 60)
    rows = []
    for _ in range(n_bubbles):
        r = short * rng.uniform(0.015, 0.05)
        rows.append((rng.uniform(0, h), rng.uniform(0, w), r, 0, rng.uniform(0.35, 0.6), r + 12))
    for _ in range(n_dust):
        r = rng.uniform(1.5, 10.0) if rng.random() < 0.9 else rng.uniform(10.0, 25.0)
        rows.append((rng.uniform(0, h), rng.uniform(0, w), r, 1, rng.uniform(0.35, 0.85), r + 2))
    return np.array(rows, np.float64).reshape(-1, 6)


@lru_cache(maxsize=4)
def get_scene(shape: tuple[int, int], seed: int) -> _Scene:
    """Build (and cache) every seed- and shape-dependent table."""
    root = np.random.SeedSequence([int(seed), 0x6161])
    r_large, r_medium, r_fine, r_obj, r_colour = (np.random.default_rng(s) for s in root.spawn(5))
    factor = _large_factor(shape)
    fibre, nuc_u, nuc_p = _make_fine(r_fine)
    glass = r_colour.uniform(232, 248)
    background = (glass + r_colour.uniform(-4, 4, 3)).clip(0, 255).astype(np.float32)
    eosin = (_EOSIN + r_colour.uniform(-0.06, 0.06, 3)).clip(0.01).astype(np.float32)
    hema = (_HEMA + r_colour.uniform(-0.08, 0.08, 3)).clip(0.05).astype(np.float32)
    pens = np.array([[1.3, 0.7, 0.15], [1.0, 0.25, 0.9], [1.4, 1.4, 1.3]], np.float32)
    return _Scene(
        shape=shape,
        large_factor=factor,
        large=_make_large(r_large, shape, factor),
        medium=_make_medium(r_medium, _medium_size(shape)),
        fibre=fibre,
        nuc_u=nuc_u,
        nuc_p=nuc_p,
        background=background,
        eosin=eosin / np.linalg.norm(eosin),
        hema=hema / np.linalg.norm(hema),
        eosin_conc=float(r_colour.uniform(0.35, 0.6)),
        hema_conc=float(r_colour.uniform(0.9, 1.4)),
        faint=float(r_colour.uniform(0.18, 0.3)),
        pen_od=pens[int(r_colour.integers(0, 3))],
        objects=_make_objects(r_obj, shape),
    )


# --------------------------------------------------------------------------
# Per-window evaluation
# --------------------------------------------------------------------------


def _axis(start: int, stop: int, factor: int, n: int, wrap: bool):
    """Bilinear source indices and weights along one axis (pixel-centre aligned)."""
    u = (np.arange(start, stop, dtype=np.float64) + 0.5) / factor - 0.5
    i0 = np.floor(u).astype(np.int64)
    w = (u - i0).astype(np.float32)
    i1 = i0 + 1
    if wrap:
        i0, i1 = i0 % n, i1 % n
    else:
        i0, i1 = np.clip(i0, 0, n - 1), np.clip(i1, 0, n - 1)
    return i0, i1, w


def _bilinear(
    grid: np.ndarray,
    factor: int,
    win: tuple[int, int, int, int],
    wrap: bool,
    channels: tuple[int, ...] | None = None,
):
    """Upsample ``grid`` (C, gh, gw) over a level-0 window, element-wise.

    Each output value is computed from the same four grid values by the same
    element-wise operations whatever the window, so overlapping windows agree
    bit for bit (a matrix product would not: BLAS reorders sums).
    """
    y0, y1, x0, x1 = win
    iy0, iy1, wy = _axis(y0, y1, factor, grid.shape[1], wrap)
    ix0, ix1, wx = _axis(x0, x1, factor, grid.shape[2], wrap)
    rows = np.unique(np.concatenate([iy0, iy1]))
    r0, r1 = np.searchsorted(rows, iy0), np.searchsorted(rows, iy1)
    # 2-D arrays of one shape only: broadcasting along the middle axis of a
    # 3-D array is several times slower in numpy.
    wy_full = np.empty((len(iy0), len(ix0)), np.float32)
    wy_full[:] = wy[:, None]
    channels = tuple(range(grid.shape[0])) if channels is None else channels
    out = np.empty((len(channels), len(iy0), len(ix0)), np.float32)
    for k, c in enumerate(channels):
        sub = grid[c, rows]
        left = np.take(sub, ix0, axis=1)
        across = left + (np.take(sub, ix1, axis=1) - left) * wx
        top = np.take(across, r0, axis=0)
        diff = np.take(across, r1, axis=0)
        diff -= top
        diff *= wy_full
        diff += top
        out[k] = diff
    return out


def _touches(grid: np.ndarray, factor: int, win: tuple[int, int, int, int]) -> bool:
    """Whether a non-wrapping 2-D grid has any nonzero value under the window."""
    y0, y1, x0, x1 = win
    gy0, gx0 = max(y0 // factor - 1, 0), max(x0 // factor - 1, 0)
    return bool(grid[gy0 : y1 // factor + 2, gx0 : x1 // factor + 2].any())


def _periodic(tex: np.ndarray, win: tuple[int, int, int, int]) -> np.ndarray:
    """Window of a periodic texture by absolute coordinates (a view when it fits)."""
    y0, y1, x0, x1 = win
    n = tex.shape[0]
    sy, sx = y0 % n, x0 % n
    if sy + (y1 - y0) <= n and sx + (x1 - x0) <= n:
        return tex[sy : sy + (y1 - y0), sx : sx + (x1 - x0)]
    return tex[np.ix_(np.arange(y0, y1) % n, np.arange(x0, x1) % n)]


def _tissue_fields(scene: _Scene, win: tuple[int, int, int, int], rgb: bool = True):
    """Mask, tissue field and the upsampled grids (all channels only when ``rgb``)."""
    large = _bilinear(
        scene.large, scene.large_factor, win, wrap=False, channels=(0, 1, 3) if rgb else (0,)
    )
    medium = _bilinear(
        scene.medium, _MEDIUM_FACTOR, win, wrap=True, channels=(0, 1, 2) if rgb else (0, 1)
    )
    field = large[0] + 0.12 * medium[0]
    mask = (field > 0) & (medium[1] <= 0)
    return mask, field, large, medium


def _draw_objects(scene: _Scene, rgb: np.ndarray, win: tuple[int, int, int, int]) -> None:
    """Darken bubbles' rims and dust specks in place in planar ``rgb`` (3, h, w)."""
    y0, y1, x0, x1 = win
    obj = scene.objects
    if not len(obj):
        return
    reach = obj[:, 5]
    hit = (
        (obj[:, 0] + reach > y0)
        & (obj[:, 0] - reach < y1)
        & (obj[:, 1] + reach > x0)
        & (obj[:, 1] - reach < x1)
    )
    for cy, cx, r, kind, dark, reach_ in obj[hit]:
        ya, yb = max(y0, int(cy - reach_)), min(y1, int(cy + reach_) + 1)
        xa, xb = max(x0, int(cx - reach_)), min(x1, int(cx + reach_) + 1)
        if ya >= yb or xa >= xb:
            continue
        dy = (np.arange(ya, yb, dtype=np.float32) + 0.5 - cy)[:, None]
        dx = (np.arange(xa, xb, dtype=np.float32) + 0.5 - cx)[None, :]
        d = np.sqrt(dy * dy + dx * dx)
        if kind == 0:  # bubble: dark refractive rim, slightly grey inside
            rim = np.exp(-(((d - r) / 4.0) ** 2)) * dark
            inner = np.where(d < r, 0.04, 0.0)
            factor = (1 - rim - inner)[None]
        else:  # dust: a soft, dark, slightly brown speck
            a = dark * _smoothstep((r - d) / 1.5)
            factor = 1 - a[None] * np.array([0.9, 1.0, 1.05], np.float32)[:, None, None]
        rgb[:, ya - y0 : yb - y0, xa - x0 : xb - x0] *= factor


def render_window(scene: _Scene, win: tuple[int, int, int, int], rgb: bool = True):
    """RGB (uint8, or None) and mask (uint8 0/1) of a level-0 window."""
    mask, field, large, medium = _tissue_fields(scene, win, rgb)
    if not rgb:
        return None, mask.astype(np.uint8)
    log_illum = large[2]
    # Most tiles carry no pen and many no tissue: skip those terms there.
    pen = None
    if _touches(scene.large[2], scene.large_factor, win):
        pen = _bilinear(scene.large, scene.large_factor, win, wrap=False, channels=(2,))[0]
    eosin = hema = None
    if mask.any():
        m = mask.astype(np.float32)
        # Stain strength: faint at the tissue edge, full a little way inside.
        strength = (scene.faint + (1 - scene.faint) * _smoothstep(field / 0.25)) * large[1] * m
        fibre = _periodic(scene.fibre, win)
        eosin = strength * scene.eosin_conc * (1.0 + 0.35 * fibre)
        visible = _periodic(scene.nuc_u, win) < (medium[2] * 255)
        nucleus = _periodic(scene.nuc_p, win) * visible
        hema = strength * scene.hema_conc * (0.03 + 0.9 * nucleus)
    # Planar per-channel arithmetic: broadcasting against a trailing axis of
    # 3 is several times slower than three plain 2-D passes.
    out = np.empty((3, *mask.shape), np.float32)
    for c in range(3):
        od = -log_illum
        if eosin is not None:
            od += eosin * scene.eosin[c]
            od += hema * scene.hema[c]
        if pen is not None:
            od += pen * scene.pen_od[c]
        np.negative(od, out=od)
        np.exp(od, out=od)
        od *= scene.background[c]
        out[c] = od
    _draw_objects(scene, out, win)
    np.clip(out, 0, 255, out=out)
    rgb8 = np.empty((*mask.shape, 3), np.uint8)
    for c in range(3):
        rgb8[..., c] = out[c]
    return rgb8, mask.astype(np.uint8)
