"""Roofline of a 1.024 Gpx step: model cost, machine rates, limits, and a profile.

Prints one JSON object with:

- ``model``: FLOP and bytes per input pixel of the default U-Net's forward
  and backward pass, counted from the built model (``core/roofline.py``),
  per layer and in total, for float32 and for the trainer's precision;
- ``machine``: matrix rate (TensorFlow matmul, float32 and bfloat16) and
  memory bandwidth (numpy copy), measured here;
- ``limits``: the lower bound of a 1.024 Gpx step (``bce``: forward+backward;
  ``dice+bce``: forward, then forward+backward) and of inference (forward);
- ``profile``: where a tile step spends its time: each layer timed alone
  (forward, and forward+backward) on one tile, the whole compiled tile step
  (``_backend.TileStep``: forward pass, gradient pass) and the achieved FLOP/s
  of every layer; extrapolated to 1.024 Gpx and given as fractions of the
  limit. ``--step-seconds`` adds measured end-to-end step times (e.g. from
  ``bench_train.py``) as fractions of the limit.

Usage::

    flock /tmp/heavy.lock python benchmarks/bench_roofline.py --tile 4096 \\
        --step-seconds dice+bce=15.6 bce=9.4 inference=13.1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

GPX = 1.024e9


def best_of(fn, reps: int) -> float:
    """Smallest wall time of ``reps`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_rate(dtype: str, n: int, reps: int) -> float:
    """FLOP/s of an n x n x n TensorFlow matmul in ``dtype``."""
    import tensorflow as tf

    a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
    b = tf.random.normal((n, n), dtype=tf.float32, seed=2)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    f = tf.function(lambda: tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32)))
    return 2.0 * n**3 / best_of(lambda: f().numpy(), reps)


def copy_bandwidth(mbytes: int, reps: int) -> float:
    """Bytes/s of a numpy copy (one read and one write per byte)."""
    import numpy as np

    src = np.ones(mbytes * 2**20, np.uint8)
    dst = np.empty_like(src)
    return 2.0 * src.nbytes / best_of(lambda: np.copyto(dst, src), reps)


def _numpy(result):
    """Wait for a TensorFlow result (copy every tensor out)."""
    import tensorflow as tf

    return tf.nest.map_structure(lambda t: t.numpy(), result)


def _layer_functions(ly, args, cot, input_grad: bool):
    """Compiled forward and forward+backward of one layer on fixed inputs."""
    import tensorflow as tf

    def call():
        return ly(args if len(args) > 1 else args[0])

    def fwd():
        return call()

    def fwd_bwd():
        with tf.GradientTape() as tape:
            if input_grad:
                for a in args:
                    tape.watch(a)
            y = call()
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * cot)
        srcs = list(ly.trainable_variables) + (list(args) if input_grad else [])
        return tape.gradient(loss, srcs) if srcs else y

    return tf.function(fwd), tf.function(fwd_bwd)


def profile_layers(model, rows, tile: int, reps: int) -> list[dict]:
    """Forward and forward+backward wall time of each layer alone on one tile."""
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1, tile, tile, 3), dtype=np.uint8)
    by_name = {r.name: r for r in rows}
    layers = [ly for ly in model.layers if ly.name in by_name]
    # The actual inputs of every layer on this tile.
    probe = keras.Model(model.inputs, [ly.output for ly in layers])
    outs = dict(zip([ly.name for ly in layers], probe(x)))
    outs[model.layers[0].name] = tf.constant(x)
    out = []
    for ly in layers:
        ins = ly.input if isinstance(ly.input, (list, tuple)) else [ly.input]
        args = [outs[t._keras_history[0].name] for t in ins]
        r = by_name[ly.name]
        cot = tf.random.normal(tf.shape(outs[ly.name]), seed=3)

        f1, f2 = _layer_functions(ly, args, cot, r.input_grad)
        t_f = best_of(lambda f1=f1: _numpy(f1()), reps)
        t_fb = best_of(lambda f2=f2: _numpy(f2()), reps)
        px = float(tile * tile)
        flop_f = (r.matrix_flop + r.elementwise_flop) * px
        flop_fb = flop_f + r.backward_flop * px
        out.append(
            {
                "layer": r.name,
                "kind": r.kind,
                "dtype": r.dtype,
                "forward_s": round(t_f, 5),
                "forward_backward_s": round(t_fb, 5),
                "forward_gflops": round(flop_f / t_f / 1e9, 2),
                "forward_backward_gflops": round(flop_fb / t_fb / 1e9, 2),
            }
        )
    return out


def profile_tile_step(model, tile: int, reps: int) -> dict:
    """The trainer's compiled tile functions on one tile (no halo cropping)."""
    import numpy as np

    from napari_gigapixel.core._backend import TileStep
    from napari_gigapixel.core.unet import model_geometry

    os_ = model_geometry(model).output_stride
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8)
    y = (rng.random((tile // os_, tile // os_)) > 0.5).astype(np.uint8)
    w = np.ones_like(y)
    step = TileStep(model, 8)
    t_f = best_of(lambda: step.forward(x, y, w, 0, 0), reps)
    t_g = best_of(lambda: step.gradient(x, y, w, 0, 0, c_bce=1e-6, c_da=1e-6), reps)
    return {"forward_s": round(t_f, 4), "gradient_s": round(t_g, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", type=int, default=4096, help="profiled tile side (pixels)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--matmul", type=int, default=2048, help="matmul side")
    p.add_argument("--copy-mb", type=int, default=512)
    p.add_argument("--precision", choices=("auto", "mixed", "float32"), default="auto")
    p.add_argument(
        "--step-seconds",
        nargs="*",
        default=[],
        metavar="LOSS=SECONDS",
        help="measured 1.024 Gpx times to report as fractions of the limit "
        "(keys: bce, dice+bce, inference)",
    )
    from _bench_common import add_model_size

    add_model_size(p)
    args = p.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from napari_gigapixel.core._quiet_tf import load_keras_quietly

    load_keras_quietly()
    from napari_gigapixel.core.roofline import layer_costs, model_cost, step_limit
    from napari_gigapixel.core.training import use_mixed_precision
    from napari_gigapixel.core.unet import build_unet, preset_config

    mixed = {"auto": use_mixed_precision("auto"), "mixed": True, "float32": False}
    dtype = "mixed_bfloat16" if mixed[args.precision] else "float32"
    mcfg = preset_config(args.model_size)
    models = {"float32": build_unet(mcfg), dtype: build_unet(mcfg, dtype=dtype)}
    counts = {}
    for name, m in models.items():
        counts[name] = {
            "totals_per_pixel": {k: round(v, 3) for k, v in model_cost(m).to_dict().items()},
            "layers": [
                {
                    "layer": r.name,
                    "kind": r.kind,
                    "dtype": r.dtype,
                    "stride": r.stride,
                    "forward_flop": round(r.matrix_flop + r.elementwise_flop, 3),
                    "backward_flop": round(r.backward_flop, 3),
                    "forward_bytes": round(r.in_bytes + r.out_bytes, 3),
                    "backward_bytes": round(r.backward_bytes, 3),
                }
                for r in layer_costs(m)
            ],
        }

    rates = {
        "float32": matmul_rate("float32", args.matmul, args.reps),
        "bfloat16": matmul_rate("bfloat16", args.matmul, args.reps),
    }
    bw = copy_bandwidth(args.copy_mb, args.reps)
    limits = {}
    for name, m in models.items():
        rows = layer_costs(m)
        limits[name] = {
            loss: {
                k: round(v, 3)
                for k, v in step_limit(
                    rows, GPX, loss=loss, matrix_rate=rates, bandwidth=bw
                ).items()
            }
            for loss in ("bce", "dice", "dice+bce", "inference")
        }

    model = models[dtype]
    rows = layer_costs(model)
    per_layer = profile_layers(model, rows, args.tile, args.reps)
    step = profile_tile_step(model, args.tile, args.reps)
    px = float(args.tile * args.tile)
    scale = GPX / px
    lim = limits[dtype]
    tile_based = {
        "inference": step["forward_s"] * scale,
        "bce": step["gradient_s"] * scale,
        "dice+bce": (step["forward_s"] + step["gradient_s"]) * scale,
    }
    sum_f = sum(r["forward_s"] for r in per_layer)
    sum_fb = sum(r["forward_backward_s"] for r in per_layer)
    # Layers alone lose the graph's fusions (their sum exceeds the compiled
    # step), so shares are of the sum of the layers' own times.
    for r in per_layer:
        r["share_forward"] = round(r["forward_s"] / sum_f, 3)
        r["share_forward_backward"] = round(r["forward_backward_s"] / sum_fb, 3)
    measured = {}
    for item in args.step_seconds:
        key, _, val = item.partition("=")
        measured[key] = {
            "seconds": float(val),
            "fraction_of_limit": round(lim[key]["limit_s"] / float(val), 3),
        }
    out = {
        "benchmark": "roofline",
        "precision": dtype,
        "cpu_count": os.cpu_count(),
        "model": counts,
        "machine": {
            "matmul_gflops": {k: round(v / 1e9, 1) for k, v in rates.items()},
            "copy_gbytes_per_s": round(bw / 1e9, 2),
        },
        "limits_1gpx": limits,
        "profile": {
            "tile": args.tile,
            "tile_step": step,
            "layers": per_layer,
            "layers_sum_forward_s": round(sum_f, 4),
            "layers_sum_forward_backward_s": round(sum_fb, 4),
            "layers_alone_over_compiled": {
                "forward": round(sum_f / step["forward_s"], 3),
                "forward_backward": round(sum_fb / step["gradient_s"], 3),
            },
            "tile_step_mpx_per_s": {
                "forward": round(px / step["forward_s"] / 1e6, 1),
                "gradient": round(px / step["gradient_s"] / 1e6, 1),
            },
            "extrapolated_1gpx_s": {k: round(v, 2) for k, v in tile_based.items()},
            "fraction_of_limit": {
                k: round(lim[k]["limit_s"] / v, 3) for k, v in tile_based.items()
            },
        },
        "measured_1gpx": measured,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
