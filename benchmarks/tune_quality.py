"""Compare training recipes on the *tuning* slides only (never the benchmark's held-out ones).

``bench_quality.py`` reports the default recipe on slides 0 (train) and 1-2
(held out) of each family. Settings are chosen here instead, on other slide
seeds: per family, each recipe trains on every ``--train-slides`` slide from
every ``--seeds`` initial seed and is scored on every ``--check-slides`` slide
(Dice, precision, recall, hard-negative accuracy, the share of the misses
on the tissue's rim). The worst case over all (family, train slide, seed,
check slide) runs is what a recipe is judged by.

The default slides span what the benchmark asks of a recipe. Training slide
10 is pale and carries green pen; training slide 15 is the darkest tuning
slide (median optical density of its non-glass pixels 0.86 on ``ihc`` and
0.62 on ``ihc-as-he``, against 0.66 and 0.46 for slide 10), as the
benchmark's training slide 0 is darker than its held-out slides (0.63
against 0.54 and 0.56 on ``ihc-as-he``; at the tissue's faint edge on
``ihc``, 10th percentile 0.18 against 0.15 and 0.16). Check slide 14 carries
blue pen, 27 and 32 black pen, and 32 is the palest at its edge. Trained on
slides 10 and 14 (the protocol before), a recipe never had to carry a dark
slide's model over to paler slides, where the benchmark's worst cases are.

``--rf`` also trains the benchmark's random-forest pixel classifier on every
(family, training slide, seed) and scores it on the same check slides, so the
issue's second bar (the U-Net beats the forest on every family) is checked on
tuning slides too: per family the forest's median and worst, and per recipe
how many paired scores the U-Net wins. Prints one JSON object; progress lines
go to stderr. Usage::

    python benchmarks/tune_quality.py --recipe base "" --recipe bce "--loss bce" [--rf]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import make_slides, rf_baseline, unet_run  # noqa: E402


def _key(run: dict) -> tuple:
    return (run["family"], run["train"], run["seed"], run["check"])


def versus_forest(unet_runs: list[dict], forest_runs: list[dict]) -> dict:
    """Per family: the forest's median and worst Dice, and the U-Net's paired wins.

    Runs pair on (family, training slide, seed, check slide); a family the
    forest was not run on is left out. ``beats`` is True when the U-Net's
    median and worst Dice are both above the forest's.
    """
    forest = {_key(r): r for r in forest_runs}
    out = {}
    for family in sorted({r["family"] for r in unet_runs}):
        pairs = [
            (r, forest[_key(r)]) for r in unet_runs if r["family"] == family and _key(r) in forest
        ]
        if not pairs:
            continue
        u = [a["dice"] for a, _ in pairs]
        f = [b["dice"] for _, b in pairs]
        out[family] = {
            "forest_dice_median": statistics.median(f),
            "forest_dice_worst": min(f),
            "unet_better": sum(a > b for a, b in zip(u, f)),
            "pairs": len(pairs),
            "beats": statistics.median(u) > statistics.median(f) and min(u) > min(f),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from napari_gigapixel.core.tiled_model import TTA_MODES

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="1024x4096")
    p.add_argument("--families", nargs="+", default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train-slides", type=int, nargs="+", default=[10, 15])
    p.add_argument("--check-slides", type=int, nargs="+", default=[11, 14, 27, 32])
    p.add_argument(
        "--recipe",
        nargs=2,
        action="append",
        metavar=("NAME", "ARGS"),
        required=True,
        help="a recipe: its name and its extra 'train' arguments (quoted); repeatable",
    )
    p.add_argument("--cache", default="/tmp/bq-cache")
    p.add_argument("--keep", default=None, help="keep the models and predictions in this folder")
    p.add_argument(
        "--probability", action="store_true", help="also write each prediction's probability"
    )
    p.add_argument(
        "--rf", action="store_true", help="also run the random-forest baseline on the same slides"
    )
    p.add_argument("--rf-samples", type=int, default=50_000, help="pixels the forest trains on")
    p.add_argument(
        "--tta",
        choices=TTA_MODES,
        default=None,
        help="predict --tta (default: predict's)",
    )
    args = p.parse_args(argv)

    from napari_gigapixel.core.synthetic import parse_shape
    from napari_gigapixel.core.texture_slides import FAMILIES

    used = set(args.train_slides) | set(args.check_slides)
    if used & {0, 1, 2}:
        raise SystemExit("slides 0-2 are the benchmark's; tune on other slide seeds")
    shape = parse_shape(args.shape)
    families = args.families or list(FAMILIES)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    report = {}
    forest_runs: list[dict] = []
    if args.rf:
        for family in families:
            slides = make_slides(family, shape, sorted(used), cache)
            held = {s: slides[s] for s in args.check_slides}
            for ts in args.train_slides:
                for seed in args.seeds:
                    rf = rf_baseline(slides[ts], held, shape, seed, args.rf_samples)
                    for hs, sc in rf["heldout"].items():
                        forest_runs.append(
                            {"family": family, "train": ts, "seed": seed, "check": hs, **sc}
                        )
                    print(
                        f"forest {family} train {ts} seed {seed}: "
                        + " ".join(f"{v['dice']:.4f}" for v in rf["heldout"].values()),
                        file=sys.stderr,
                        flush=True,
                    )
    with tempfile.TemporaryDirectory(prefix="tune-quality-") as scratch:
        tmp = args.keep or scratch
        for name, extra in args.recipe:
            t0 = time.perf_counter()
            runs = []
            for family in families:
                slides = make_slides(family, shape, sorted(used), cache)
                held = {s: slides[s] for s in args.check_slides}
                for ts in args.train_slides:
                    for seed in args.seeds:
                        out = Path(tmp) / name / family / str(ts)
                        out.mkdir(parents=True, exist_ok=True)
                        u = unet_run(
                            slides[ts],
                            held,
                            shape,
                            seed,
                            shlex.split(extra),
                            out,
                            args.probability,
                            args.tta,
                        )
                        for hs, sc in u["heldout"].items():
                            runs.append(
                                {
                                    "family": family,
                                    "train": ts,
                                    "seed": seed,
                                    "check": hs,
                                    "train_dice": u["train_dice"],
                                    **sc,
                                }
                            )
                        print(
                            f"{name} {family} train {ts} seed {seed}: "
                            + " ".join(
                                f"{v['dice']:.4f}/{v['hard_negative_accuracy']:.2f}"
                                for v in u["heldout"].values()
                            ),
                            file=sys.stderr,
                            flush=True,
                        )
            fam = {}
            for family in families:
                mine = [r for r in runs if r["family"] == family]
                d = [r["dice"] for r in mine]
                h = [r["hard_negative_accuracy"] for r in mine]
                fam[family] = {
                    "dice_median": statistics.median(d),
                    "dice_worst": min(d),
                    "hard_median": statistics.median(h),
                    "hard_worst": min(h),
                }
                for kind in ("pen", "dust", "bubble"):
                    v = [r[f"hard_{kind}"] for r in mine if r.get(f"hard_{kind}") is not None]
                    if v:
                        fam[family][f"{kind}_median"] = statistics.median(v)
                rim = [r["missed_at_border"] for r in mine]
                rim = [v for v in rim if v is not None]
                if rim:
                    fam[family]["missed_at_border_median"] = statistics.median(rim)
            report[name] = {
                "args": extra,
                "dice_worst": min(r["dice"] for r in runs),
                "hard_median": statistics.median(r["hard_negative_accuracy"] for r in runs),
                "families": fam,
                "seconds": time.perf_counter() - t0,
                "runs": runs,
            }
            if forest_runs:
                report[name]["versus_forest"] = versus_forest(runs, forest_runs)
            print(
                json.dumps({name: {k: v for k, v in report[name].items() if k != "runs"}}),
                file=sys.stderr,
                flush=True,
            )
    tta = args.tta or "predict's default"
    result = {"benchmark": "tune_quality", "shape": list(shape), "tta": tta, "recipes": report}
    if forest_runs:
        result["forest_runs"] = forest_runs
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
