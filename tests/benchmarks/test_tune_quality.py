"""The tuning protocol against the random-forest baseline (benchmarks/tune_quality.py)."""

from __future__ import annotations

from tune_quality import versus_forest


def _run(family, train, seed, check, dice):
    return {"family": family, "train": train, "seed": seed, "check": check, "dice": dice}


def test_versus_forest_pairs_runs_and_needs_median_and_worst():
    unet = [
        _run("ihc", 10, 0, 11, 0.99),
        _run("ihc", 10, 0, 14, 0.97),
        _run("ihc", 15, 0, 11, 0.98),
        _run("he", 10, 0, 11, 0.995),
        _run("he", 10, 0, 14, 0.990),
        _run("lone", 10, 0, 11, 0.9),  # no forest run: left out
    ]
    forest = [
        # listed in another order: pairing is by key, not position
        _run("ihc", 15, 0, 11, 0.975),
        _run("ihc", 10, 0, 14, 0.96),
        _run("ihc", 10, 0, 11, 0.995),
        _run("he", 10, 0, 14, 0.985),
        _run("he", 10, 0, 11, 0.991),
    ]
    out = versus_forest(unet, forest)
    assert set(out) == {"ihc", "he"}
    ihc = out["ihc"]
    assert (ihc["unet_better"], ihc["pairs"]) == (2, 3)
    assert ihc["forest_dice_median"] == 0.975 and ihc["forest_dice_worst"] == 0.96
    # U-Net median 0.98 > 0.975 and worst 0.97 > 0.96: it beats the forest
    assert ihc["beats"] is True
    he = out["he"]
    assert (he["unet_better"], he["pairs"]) == (2, 2)
    assert he["beats"] is True
    # a forest with the better worst case is not beaten, whatever the median
    forest[1] = _run("ihc", 10, 0, 14, 0.972)
    assert versus_forest(unet, forest)["ihc"]["beats"] is False
