"""Loading Keras hides TensorFlow's C++ start-up chatter, and only that."""

from __future__ import annotations

import subprocess
import sys

CODE = (
    "import sys\n"
    "from napari_gigapixel.core._quiet_tf import load_keras_quietly\n"
    "load_keras_quietly()\n"
    "import keras\n"
    "print('stderr still works', file=sys.stderr)\n"
    "print(keras.backend.backend())\n"
)


def _run(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **env_extra}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env=env, timeout=300
    )


def test_keras_loads_without_start_up_logs_and_stderr_is_restored():
    res = _run({})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() in ("tensorflow", "jax", "torch")
    assert res.stderr.strip() == "stderr still works"


def test_logs_can_be_asked_for():
    res = _run({"NAPARI_GIGAPIXEL_TF_LOGS": "1"})
    assert res.returncode == 0, res.stderr
    assert "stderr still works" in res.stderr
    if res.stdout.strip() == "tensorflow" and sys.platform.startswith("linux"):
        # The CPU wheel announces oneDNN and the missing CUDA drivers at start-up.
        assert len(res.stderr.strip().splitlines()) > 1, res.stderr
