"""Nothing a user made is lost: kill -9 at any moment, a disk that fills up.

A killed run leaves the last checkpoint loadable and never a half-written
file where an output goes; a full disk is one clear error and earlier
outputs stay intact.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile

from napari_gigapixel.core.events import CheckpointEvent
from napari_gigapixel.core.model_io import ModelFileError, read_model_meta
from napari_gigapixel.core.training import TrainConfig, train
from napari_gigapixel.core.unet import load_model


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:256, 0:384]
    tissue = (np.sin(yy / 17.0) * np.cos(xx / 23.0)) > 0
    img = np.where(tissue[..., None], [170, 80, 150], [235, 232, 236]).astype(np.float64)
    img = np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    tifffile.imwrite(d / "s.tif", img, photometric="rgb")
    tifffile.imwrite(d / "m.tif", tissue[::4, ::4].astype(np.uint8))
    return d / "s.tif", d / "m.tif"


def _assert_loadable_or_absent(out) -> int:
    """The output is either absent or a complete model; return its step count."""
    if not out.exists():
        return 0
    meta = read_model_meta(out)  # a truncated zip would raise here
    model, _ = load_model(out)
    assert model.count_params() > 0
    return len(meta["history"])


def _wait_for_new_checkpoint(out, proc, since: float, timeout: float = 180.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if out.exists() and out.stat().st_mtime > since:
            return
        assert proc.poll() is None, "training ended before it was killed"
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_kill_9_of_the_cli_at_random_moments_leaves_a_loadable_checkpoint(pair, tmp_path):
    s, m = pair
    out = tmp_path / "model.keras"
    argv = [
        sys.executable, "-m", "napari_gigapixel", "train",
        "--image", str(s), "--mask", str(m), "--out", str(out), "--overwrite",
        "--steps", "100000", "--checkpoint-every", "1", "--quiet",
    ]  # fmt: skip
    # Bounded and reproducible: one kill during start-up, then kills at random
    # moments after a checkpoint of that run, i.e. during the next step or
    # while the next checkpoint is being written (one is written every step).
    rng = np.random.default_rng(7)
    plans = [("start-up", rng.uniform(0.2, 2.0))]
    plans += [("training", d) for d in rng.uniform(0.0, 1.5, size=3)]
    steps_seen = []
    for phase, delay in plans:
        since = out.stat().st_mtime if out.exists() else 0.0
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if phase == "training":
            _wait_for_new_checkpoint(out, proc, since)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        steps_seen.append(_assert_loadable_or_absent(out))
        # No half-written file was left where the output goes (a temporary
        # ``.tmp-*`` beside it may be, never under the output's name).
        stray = [p.name for p in tmp_path.iterdir() if p.name != "model.keras"]
        assert all(n.startswith(".tmp-") for n in stray), stray
    assert min(steps_seen[1:]) >= 1


def test_a_full_disk_is_a_clear_error_and_keeps_the_last_checkpoint(pair, tmp_path, monkeypatch):
    import keras

    s, m = pair
    out = tmp_path / "model.keras"
    cfg = TrainConfig(images=[str(s)], masks=[str(m)], out=str(out), steps=3, checkpoint_every=1)
    gen = train(cfg)
    for event in gen:
        if isinstance(event, CheckpointEvent):
            break  # step 1 is on disk

    def no_space(self, path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")  # what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(keras.Model, "save", no_space)
    with pytest.raises(ModelFileError) as info:
        for _event in gen:
            pass
    message = str(info.value)
    assert "model.keras" in message and "No space left on device" in message
    assert "\n" not in message
    monkeypatch.undo()
    assert _assert_loadable_or_absent(out) == 1  # the step-1 model, intact
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # temp file removed
