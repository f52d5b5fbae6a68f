"""Time to open a gigapixel slide in napari and show its first frame.

Makes (once, cached) a 16,000 x 64,000 synthetic H&E slide (1.024 Gpx,
JPEG-tiled pyramidal OME-TIFF) with ``core.synthetic.make_synthetic_slide``,
or takes ``--slide PATH``; then, in a fresh child process (so that making
the slide does not count in its memory), creates a shown napari viewer,
opens the slide with this plugin, and measures:

* ``open_slide_s``: ``core.slide.open_slide`` alone (metadata + one tile);
* ``viewer_open_s``: ``viewer.open(path, plugin="napari-gigapixel")``;
* ``first_frame_s``: from the start of ``viewer.open`` to a rendered canvas
  (``viewer.screenshot`` forces slicing, loading and drawing);
* ``zoom_frame_s``: jump to 1:1 pixels in the middle of the slide and draw;
* ``peak_rss_gib`` of the viewer process.

Prints one JSON object. Needs a display: run under ``xvfb-run -a``, e.g.::

    flock /tmp/heavy.lock xvfb-run -a .venv/bin/python benchmarks/bench_open.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def _parse_shape(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def _default_slide(shape: tuple[int, int], seed: int) -> Path:
    from napari_gigapixel.core.synthetic import default_cache_dir

    return default_cache_dir() / "bench" / f"synthetic_{shape[0]}x{shape[1]}_s{seed}.tif"


def _ensure_slide(args: argparse.Namespace) -> tuple[str, float | None]:
    if args.slide:
        return args.slide, None
    shape = _parse_shape(args.shape)
    path = _default_slide(shape, args.seed)
    if path.is_file():
        return str(path), None
    from napari_gigapixel.core.synthetic import make_synthetic_slide

    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_synthetic_slide(
        str(path),
        shape=shape,
        seed=args.seed,
        mask_out=str(path.with_name(path.stem + "_mask.tif")),
    )
    return str(path), time.perf_counter() - t0


def _peak_rss_bytes() -> int:
    """Peak RSS of this process.

    VmHWM, not ``ru_maxrss``: on Linux ``ru_maxrss`` survives ``exec`` and
    would report the parent's size (the slide generation) at fork time.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _measure(path: str) -> dict:
    """Runs in the child: a shown viewer, open, first frame, zoomed frame."""
    import numpy as np

    from napari_gigapixel.core.slide import open_slide

    t0 = time.perf_counter()
    with open_slide(path) as s:
        open_slide_s = time.perf_counter() - t0
        shape, n_levels, mpp = s.shape, len(s.levels), s.mpp
        stored = s.metadata.get("stored_levels")

    import napari

    t0 = time.perf_counter()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1280, 800)
    viewer.screenshot(canvas_only=True, flash=False)  # the empty canvas is drawn once
    viewer_create_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    (layer,) = viewer.open(path, plugin="napari-gigapixel")
    viewer_open_s = time.perf_counter() - t0
    frame = viewer.screenshot(canvas_only=True, flash=False)
    first_frame_s = time.perf_counter() - t0
    level_first = int(layer.data_level)
    drawn = float(np.mean(frame[..., :3].max(axis=-1) > 0))

    # 1:1 screen pixels per level-0 pixel in the middle of the slide.
    t0 = time.perf_counter()
    sy, sx = (float(v) for v in layer.scale[-2:])
    viewer.camera.center = (shape[0] * sy / 2, shape[1] * sx / 2)
    viewer.camera.zoom = 1.0 / sy
    zoom = viewer.screenshot(canvas_only=True, flash=False)
    zoom_frame_s = time.perf_counter() - t0
    level_zoom = int(layer.data_level)
    viewer.close()
    peak = _peak_rss_bytes()
    return {
        "slide": path,
        "shape": list(shape),
        "gpx": shape[0] * shape[1] / 1e9,
        "levels": n_levels,
        "stored_levels": stored,
        "mpp": list(mpp) if mpp else None,
        "open_slide_s": round(open_slide_s, 3),
        "viewer_create_s": round(viewer_create_s, 3),
        "viewer_open_s": round(viewer_open_s, 3),
        "first_frame_s": round(first_frame_s, 3),
        "first_frame_level": level_first,
        "first_frame_drawn_fraction": round(drawn, 3),
        "zoom_frame_s": round(zoom_frame_s, 3),
        "zoom_frame_level": level_zoom,
        "zoom_frame_nonblack": bool(zoom[..., :3].max() > 0),
        "peak_rss_gib": round(peak / 2**30, 3),
        "target_first_frame_s": 3.0,
    }


def _disk_bytes(path: str) -> int:
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", help="slide to open (default: cached synthetic slide)")
    parser.add_argument("--shape", default="16000x64000", help="synthetic slide HxW")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(args.slide)))
        return 0
    path, make_s = _ensure_slide(args)
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", "--slide", path],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        sys.stderr.write(out.stdout + out.stderr)
        return out.returncode
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["make_slide_s"] = round(make_s, 1) if make_s is not None else None
    result["file_mib"] = round(_disk_bytes(path) / 2**20, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
