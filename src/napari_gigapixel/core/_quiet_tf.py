"""Load Keras and its backend without TensorFlow's C++ start-up chatter.

TensorFlow 2.21 prints oneDNN, CUDA-stub and ``cuInit`` lines to the C-level
standard error while it loads and initialises its devices, before absl logging
is configured, so ``TF_CPP_MIN_LOG_LEVEL`` does not silence them. A user of
the CLI or the widgets would read them as errors. We point file descriptor 2 at
``/dev/null`` for the duration of the import only; Python exceptions still
propagate and are reported normally afterwards.
"""

from __future__ import annotations

import os
import sys


def load_keras_quietly() -> None:
    """Import Keras (and TensorFlow when it is the backend) with start-up logs hidden.

    Idempotent and cheap once loaded. Set ``NAPARI_GIGAPIXEL_TF_LOGS=1`` to see
    the logs (e.g. to debug a GPU or Metal set-up).
    """
    if "keras" in sys.modules or os.environ.get("NAPARI_GIGAPIXEL_TF_LOGS") == "1":
        import keras  # noqa: F401

        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (e.g. a GUI without a console)
        import keras  # noqa: F401

        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # device initialisation logs too
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
