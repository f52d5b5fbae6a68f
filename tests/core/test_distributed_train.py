"""Distributed training on a LocalCluster: the single-process run's weights, exactly.

Every run uses the default recipe (per-slide white balance, input
standardisation); others add a working resolution (pyramid level 1) and
validation (a validation slide and a validation ROI, best checkpoint).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("tensorflow")
distributed = pytest.importorskip("distributed")

from napari_gigapixel.core.distributed_train import (  # noqa: E402
    DistributedTrainError,
    train_distributed,
)
from napari_gigapixel.core.events import (  # noqa: E402
    CheckpointEvent,
    Finished,
    Message,
    Progress,
    StepEvent,
)
from napari_gigapixel.core.training import TrainConfig, TrainConfigError, train  # noqa: E402
from napari_gigapixel.core.unet import ModelConfig, load_model  # noqa: E402

SMALL = ModelConfig(widths=(4, 6, 8), decoder_widths=(3, 4, 4))


def _pair(shape, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    tissue = (np.sin(yy / 53.0) * np.cos(xx / 71.0)) > 0.1
    img = np.where(tissue[..., None], [180, 90, 160], [235, 230, 235]).astype(np.float64)
    img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    return img, tissue[::4, ::4].astype(np.uint8)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Slide files (plain TIFF) and 1/4-level masks: workers read them by path."""
    import tifffile

    d = tmp_path_factory.mktemp("slides")
    out = []
    for seed, shape in [(0, (512, 1024)), (1, (384, 512))]:
        img, mask = _pair(shape, seed)
        tifffile.imwrite(d / f"s{seed}.tif", img, tile=(256, 256))
        tifffile.imwrite(d / f"s{seed}_mask.tif", mask)
        out.append((str(d / f"s{seed}.tif"), str(d / f"s{seed}_mask.tif")))
    return out


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as c:
        yield c


def _cfg(pairs, out, **kw):
    base = dict(
        images=[p[0] for p in pairs],
        masks=[p[1] for p in pairs],
        out=str(out),
        steps=3,
        model=SMALL,
        seed=3,
        mixed_precision=False,  # float32: the comparison is to 1e-5
        checkpoint_every=0,
        # The default recipe: per-slide white balance and input standardisation.
    )
    base.update(kw)
    return TrainConfig(**base)


def _run(cfg, scheduler=None):
    cfg.scheduler = scheduler  # train() hands a run with a scheduler to the cluster
    return list(train(cfg))


def _rel_diff(a_path, b_path) -> float:
    a = load_model(a_path)[0].get_weights()
    b = load_model(b_path)[0].get_weights()
    return max(float(np.linalg.norm(x - y) / np.linalg.norm(y)) for x, y in zip(a, b))


def _same_recipe(a_path, b_path) -> dict:
    """The two model files' metadata agree on everything predict reads; returns one."""
    a, b = load_model(a_path)[1], load_model(b_path)[1]
    mc = a["model_config"]
    assert mc == b["model_config"]  # glass convention and input statistics included
    assert a["resolution"] == b["resolution"]
    va, vb = a.get("validation"), b.get("validation")
    assert (va is None) == (vb is None)
    if va is not None:
        assert (va["source"], va["best_step"]) == (vb["source"], vb["best_step"])
        assert va["best_val_dice"] == pytest.approx(vb["best_val_dice"], rel=1e-6)
    return a


@pytest.mark.parametrize(
    "case",
    [
        # One slide, its tiles split over the 2 workers (Dice sums reduced on the client).
        dict(n=1, tile=256, loss="dice+bce"),
        dict(n=1, tile=256, loss="bce"),
        # A cohort: whole slides per worker; the head prior from the workers' label
        # counts, and the whole-slide augmentations (the glass kept white).
        dict(n=2, tile="auto", loss="dice+bce", head_prior=True, augment="all"),
        # The loss weights: labels at the border and glass under the drawn pen
        # strokes weighed on every worker as in one process.
        dict(n=1, tile=256, loss="dice+focal", border_weight=4, pen_weight=8),
    ],
    ids=["split-dice+bce", "split-bce", "cohort", "split-weighted"],
)
def test_same_weights_as_the_single_process_run(slides, cluster, tmp_path, case):
    pairs = slides[: case["n"]]
    kw = {k: v for k, v in case.items() if k != "n"}
    single = _run(_cfg(pairs, tmp_path / "one.keras", **kw))
    events = _run(_cfg(pairs, tmp_path / "dist.keras", **kw), cluster.scheduler_address)
    fin = events[-1]
    assert isinstance(fin, Finished) and not fin.stopped
    assert fin.result["workers"] == 2 and fin.result["steps"] == 3
    assert fin.result["n_tiles"] == single[-1].result["n_tiles"]
    steps = [e for e in events if isinstance(e, StepEvent)]
    ref = [e for e in single if isinstance(e, StepEvent)]
    assert [s.step for s in steps] == [1, 2, 3]
    for s, r in zip(steps, ref):
        assert s.loss == pytest.approx(r.loss, rel=1e-5)
        assert s.dice == pytest.approx(r.dice, abs=1e-4)
    assert any(isinstance(e, Progress) and e.stage == "tiles" for e in events)
    assert _rel_diff(tmp_path / "dist.keras", tmp_path / "one.keras") <= 1e-5
    # The default recipe ran on the cluster: predict normalises as after one process.
    mc = _same_recipe(tmp_path / "dist.keras", tmp_path / "one.keras")["model_config"]
    assert mc.white_balance and mc.input_mean is not None


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """A pyramidal slide (levels 0 and 1) and its mask, lossless."""
    from napari_gigapixel.core.synthetic import make_synthetic_slide

    d = tmp_path_factory.mktemp("pyr")
    return make_synthetic_slide(
        d / "p.ome.tif", shape=(768, 1024), seed=5, compression="deflate", tile=256
    )


def test_level_1_on_the_cluster_is_the_single_process_run(pyramid, cluster, tmp_path):
    """Level 1, with a validation ROI snapped to the level-1 output grid: one region
    of several tiles, its tiles scored in shares over the two workers."""
    from napari_gigapixel.core.events import ValidationEvent
    from napari_gigapixel.core.resolution import Resolution

    kw = dict(tile=128, loss="dice+bce", resolution=Resolution(level=1))
    kw.update(val_roi=(101, 203, 597, 711), val_every=3)  # level 1: about 250 x 255 px
    single = _run(_cfg([pyramid], tmp_path / "one.keras", **kw))
    events = _run(_cfg([pyramid], tmp_path / "dist.keras", **kw), cluster.scheduler_address)
    fin, ref = events[-1], single[-1]
    assert isinstance(fin, Finished) and fin.result["steps"] == 3
    # Level 1 of 768 x 1024: 384 x 512 pixels, tiles of 128 split over the workers.
    assert fin.result["megapixels"] == pytest.approx(384 * 512 / 1e6)
    assert fin.result["n_tiles"] == ref.result["n_tiles"] > 1
    assert fin.result["resolution"] == ref.result["resolution"]
    assert fin.result["resolution"]["downsample"] == 2.0
    assert _rel_diff(tmp_path / "dist.keras", tmp_path / "one.keras") <= 1e-5
    _same_recipe(tmp_path / "dist.keras", tmp_path / "one.keras")
    (v,) = [e for e in events if isinstance(e, ValidationEvent)]
    (r,) = [e for e in single if isinstance(e, ValidationEvent)]
    assert v.dice == pytest.approx(r.dice, rel=1e-6) and 0 < r.dice < 1
    assert v.soft_dice == pytest.approx(r.soft_dice, rel=1e-5)
    shares = [e for e in events if isinstance(e, Progress) and e.stage == "validation"]
    assert shares and shares[-1].total == 2  # the region's tiles in two shares


def test_validation_on_the_cluster_is_the_single_process_run(slides, cluster, tmp_path):
    """A validation slide and a validation ROI of the training slide: the ROI's labels
    are left out of training on the workers (same weights), the pooled validation
    Dice equals the single-process one and the client writes the best checkpoint."""
    from napari_gigapixel.core.events import ValidationEvent

    kw = dict(
        tile=256,
        loss="dice+bce",
        val_images=[slides[1][0]],
        val_masks=[slides[1][1]],
        val_roi=(100, 300, 301, 555),
        val_every=2,
    )
    single = _run(_cfg(slides[:1], tmp_path / "one.keras", **kw))
    events = _run(_cfg(slides[:1], tmp_path / "dist.keras", **kw), cluster.scheduler_address)
    vals = [e for e in events if isinstance(e, ValidationEvent)]
    ref = [e for e in single if isinstance(e, ValidationEvent)]
    assert [v.step for v in vals] == [r.step for r in ref] == [2, 3]
    for v, r in zip(vals, ref):
        assert v.dice == pytest.approx(r.dice, rel=1e-6)
        assert v.soft_dice == pytest.approx(r.soft_dice, rel=1e-5)
        assert v.loss == pytest.approx(r.loss, rel=1e-5)
        assert (v.best_step, v.improved) == (r.best_step, r.improved)
    assert any(isinstance(e, Progress) and e.stage == "validation" for e in events)
    fin, one = events[-1].result, single[-1].result
    for key in ("val_dice", "best_val_dice", "val_loss"):
        assert fin[key] == pytest.approx(one[key], rel=1e-5)
    assert fin["best_step"] == one["best_step"]
    assert fin["best_model"] == str(tmp_path / "dist.best.keras")
    assert (tmp_path / "dist.best.keras").exists()
    assert _rel_diff(tmp_path / "dist.keras", tmp_path / "one.keras") <= 1e-5
    assert _rel_diff(tmp_path / "dist.best.keras", tmp_path / "one.best.keras") <= 1e-5
    meta = _same_recipe(tmp_path / "dist.keras", tmp_path / "one.keras")
    assert meta["validation"]["best_step"] == one["best_step"]


@pytest.mark.slow
def test_a_worker_lost_mid_step_is_replaced(slides, cluster, tmp_path):
    """Kill one worker process in the middle of step 2 (after its first task came back):
    its tasks are rerun, the restarted worker decodes the slide again, and the weights
    still match the single-process run."""
    pairs = slides[:1]
    kw = dict(tile=256, loss="dice+bce")
    _run(_cfg(pairs, tmp_path / "one.keras", **kw))
    cfg = _cfg(pairs, tmp_path / "dist.keras", scheduler=cluster.scheduler_address, **kw)
    killed = False
    with distributed.Client(cluster.scheduler_address) as client:
        victim = sorted(client.scheduler_info()["workers"])[1]
        events = []
        for ev in train(cfg):
            events.append(ev)
            mid_step_2 = (
                isinstance(ev, Progress) and ev.stage == "tiles" and "step 2" in ev.message
            )
            if mid_step_2 and not killed:
                client.restart_workers([victim])
                killed = True
    assert killed and isinstance(events[-1], Finished) and events[-1].result["steps"] == 3
    assert _rel_diff(tmp_path / "dist.keras", tmp_path / "one.keras") <= 1e-5


def test_a_step_that_lost_the_scattered_spec_runs_again(slides, cluster, tmp_path, monkeypatch):
    """A restarted worker can take the scattered run spec's last copy with it, and
    the step's tasks are cancelled ("lost dependencies"): the step runs again with
    the spec sent again, and the weights are the single-process run's."""
    from distributed.client import FutureCancelledError

    import napari_gigapixel.core.distributed_train as dtrain
    from napari_gigapixel.core._dist_cluster import DistributedTrainError

    pairs = slides[:1]
    kw = dict(tile=256, loss="dice+bce")
    _run(_cfg(pairs, tmp_path / "one.keras", **kw))
    real, lost = dtrain._one_step, []

    def one_step(plan, spec, weights, step_no, *args):
        if step_no == 2 and not lost:
            # The cluster forgets the spec, as when its last holder restarts.
            plan.client.cancel([plan.spec])
            lost.append(plan.spec.key)
            cause = FutureCancelledError(plan.spec.key, "lost dependencies")
            raise DistributedTrainError("a distributed training step failed") from cause
        return (yield from real(plan, spec, weights, step_no, *args))

    monkeypatch.setattr(dtrain, "_one_step", one_step)
    events = _run(_cfg(pairs, tmp_path / "dist.keras", **kw), cluster.scheduler_address)
    assert lost and isinstance(events[-1], Finished) and events[-1].result["steps"] == 3
    assert any(isinstance(e, Message) and "again" in e.text for e in events)
    assert _rel_diff(tmp_path / "dist.keras", tmp_path / "one.keras") <= 1e-5


def test_no_workers_left_fails_cleanly_and_keeps_the_checkpoint(slides, tmp_path, monkeypatch):
    import napari_gigapixel.core._dist_cluster as dt

    monkeypatch.setattr(dt, "NO_WORKER_SECONDS", 1.0)
    out = tmp_path / "m.keras"
    # In-process workers: cheap to start, and TensorFlow is already loaded here.
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster.scheduler_address) as client,
    ):
        cfg = _cfg(slides[:1], out, scheduler=cluster.scheduler_address, checkpoint_every=1)
        seen = []
        with pytest.raises(DistributedTrainError, match="no worker"):
            for ev in train(cfg):
                seen.append(ev)
                if isinstance(ev, CheckpointEvent) and ev.step == 1:
                    cluster.scale(0)  # every worker gone, none restarted
                    for _ in range(100):
                        if not client.scheduler_info()["workers"]:
                            break
                        time.sleep(0.1)
    assert any(isinstance(e, CheckpointEvent) for e in seen)
    _, meta = load_model(out)
    assert [h["step"] for h in meta["history"]] == [1]


def test_bad_inputs_fail_cleanly(slides, tmp_path, monkeypatch):
    import napari_gigapixel.core._dist_cluster as dt

    monkeypatch.setattr(dt, "CONNECT_TIMEOUT", 2.0)
    cfg = _cfg(slides[:1], tmp_path / "m.keras")
    cfg.images = [np.zeros((64, 64, 3), np.uint8)]
    cfg.scheduler = "tcp://127.0.0.1:1"
    with pytest.raises(TrainConfigError, match="paths"):
        list(train_distributed(cfg))
    cfg = _cfg(slides[:1], tmp_path / "m.keras")
    cfg.scheduler = "tcp://127.0.0.1:1"
    with pytest.raises(DistributedTrainError, match="cannot reach"):
        list(train_distributed(cfg))
    assert not (tmp_path / "m.keras").exists()


def test_a_bad_input_on_the_workers_is_the_projects_error(slides, cluster, tmp_path):
    """A validation ROI outside a slide (found by the worker that reads it) fails the
    run with the single-process error, before any step, and writes nothing."""
    from napari_gigapixel.core._train_data import SlideInputError

    cfg = _cfg(slides, tmp_path / "m.keras", val_roi=(100, 300, 301, 555))
    with pytest.raises(SlideInputError, match="validation ROI"):
        _run(cfg, cluster.scheduler_address)
    assert not (tmp_path / "m.keras").exists()


def test_cli_trains_a_cohort_on_the_cluster(slides, cluster, tmp_path, capsys):
    import json

    from napari_gigapixel.cli import main

    out = tmp_path / "cli.keras"
    args = ["train", "--steps", "2", "--seed", "3", "--precision", "float32"]
    for img, msk in slides:
        args += ["--image", img, "--mask", msk]
    args += ["--val-roi", "100,300,301,455", "--val-every", "1"]  # the default recipe
    args += ["--out", str(out), "--scheduler", cluster.scheduler_address, "--json"]
    assert main(args) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["workers"] == 2 and figures["steps"] == 2 and out.exists()
    assert figures["best_model"] == str(tmp_path / "cli.best.keras")
    assert 0 < figures["best_val_dice"] <= 1 and figures["best_step"] in (1, 2)
    assert load_model(out)[1]["train_config"]["scheduler"] == cluster.scheduler_address


def test_a_step_whose_task_the_scheduler_cancelled_may_run_again():
    """Only a cancelled task (a worker restarted while its task moved) reruns the
    step; a task that failed or killed its workers fails it."""
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    from napari_gigapixel.core._dist_cluster import cancelled_by_cluster

    def failed(cause):
        try:
            raise DistributedTrainError("a distributed training step failed") from cause
        except DistributedTrainError as exc:
            return exc

    assert cancelled_by_cluster(failed(FutureCancelledError("k", reason="already forgotten")))
    assert not cancelled_by_cluster(failed(KilledWorker("k", "w", 3)))
    assert not cancelled_by_cluster(failed(ValueError("a worker-side bug")))
