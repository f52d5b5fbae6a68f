"""The process runner: spawned workers, ordered events, errors, stop, death.

The job functions below run in the spawned worker, which imports this module
by name (spawn passes the caller's ``sys.path``), so they must stay top-level
and the module must stay light to import.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from napari_gigapixel.core.errors import GigapixelError
from napari_gigapixel.core.events import Finished, Message, Progress, stop_requested
from napari_gigapixel.core.masks import MaskError
from napari_gigapixel.core.runner import JobFailed, run_inline, run_job

HERE = Path(__file__).resolve().parent


def target(name: str) -> str:
    return f"{__name__}:{name}"


# -- jobs (run in the worker) ------------------------------------------------
def job_count(config, stop):
    for i in range(config["n"]):
        yield Progress("count", i + 1, config["n"], message=f"pid {os.getpid()}")
    yield Finished(result={"n": config["n"]})


def job_raise_mask_error(config, stop):
    yield Message("about to fail")
    raise MaskError(f"{config['path']}: the mask is empty. Draw some tissue first.")


def job_raise_plain(config, stop):
    yield Message("about to fail")
    raise ZeroDivisionError("division by zero in tile 3")


def job_cooperative(config, stop):
    i = 0
    while True:
        if stop_requested(stop):
            yield Finished(result={"tiles": i}, stopped=True)
            return
        yield Progress("tiles", i, 0)
        i += 1
        time.sleep(0.02)


def job_stubborn(config, stop):
    yield Message("started")
    while True:  # never looks at the stop flag
        time.sleep(0.05)


def job_import_tf(config, stop):
    import tensorflow as tf

    yield Message(tf.__version__)
    yield Finished(result={"tf_in_worker": "tensorflow" in sys.modules})


# -- tests -------------------------------------------------------------------
def test_events_arrive_in_order_from_another_process():
    job = run_job(target("job_count"), {"n": 50})
    events = list(job.events())
    assert [e.done for e in events[:-1]] == list(range(1, 51))
    assert isinstance(events[-1], Finished) and events[-1].result == {"n": 50}
    assert events[0].message != f"pid {os.getpid()}"  # it ran elsewhere
    assert job.join(10) == 0
    assert not job.alive


def test_run_inline_runs_the_same_generator_here():
    events = list(run_inline(target("job_count"), {"n": 3}))
    assert [e.done for e in events[:-1]] == [1, 2, 3]
    assert events[0].message == f"pid {os.getpid()}"


def test_gigapixel_error_is_reraised_with_its_class_and_message():
    job = run_job(target("job_raise_mask_error"), {"path": "tissue.tif"})
    seen = []
    with pytest.raises(MaskError) as info:
        for event in job.events():
            seen.append(event)
    assert str(info.value) == "tissue.tif: the mask is empty. Draw some tissue first."
    assert type(info.value) is MaskError
    assert [e.text for e in seen] == ["about to fail"]


def test_other_errors_become_job_failed_with_the_traceback():
    job = run_job(target("job_raise_plain"), {})
    with pytest.raises(JobFailed) as info:
        list(job.events())
    assert "ZeroDivisionError: division by zero in tile 3" in str(info.value)
    assert "\n" not in str(info.value)
    assert "Traceback" in info.value.details and "job_raise_plain" in info.value.details


def test_stop_ends_a_job_cooperatively():
    job = run_job(target("job_cooperative"), {}, grace=30)
    events = []
    for event in job.events():
        events.append(event)
        if len(events) == 3:
            job.stop()
    last = events[-1]
    assert isinstance(last, Finished) and last.stopped and last.result["tiles"] >= 2
    assert job.join(10) == 0  # ended by itself, long before the grace period


def test_a_job_ignoring_stop_is_terminated_after_grace():
    job = run_job(target("job_stubborn"), {}, grace=0.5)
    t0 = None
    events = []
    for event in job.events():
        events.append(event)
        if t0 is None:
            t0 = time.monotonic()
            job.stop()
    assert time.monotonic() - t0 < 10
    assert isinstance(events[-1], Finished) and events[-1].stopped
    assert events[-1].result == {"terminated": True}
    assert not job.alive and job.exitcode != 0


def test_a_worker_killed_mid_run_raises_job_failed():
    job = run_job(target("job_stubborn"), {})
    with pytest.raises(JobFailed, match="died .*killed by signal 9.*out of memory"):
        for _event in job.events():
            os.kill(job.pid, signal.SIGKILL)


def test_a_bad_target_is_a_clear_error():
    job = run_job("napari_gigapixel.core.events:no_such_job", {})
    with pytest.raises(GigapixelError, match="has no 'no_such_job'"):
        list(job.events())


@pytest.mark.slow
def test_tensorflow_in_the_worker_stays_out_of_the_caller():
    # A clean interpreter: this pytest process may already hold TensorFlow.
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from napari_gigapixel.core.runner import run_job
        events = list(run_job("test_runner:job_import_tf", None).events())
        assert events[-1].result == {{"tf_in_worker": True}}, events
        print("TF_IN_CALLER", "tensorflow" in sys.modules, "keras" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "TF_IN_CALLER False False" in out.stdout
