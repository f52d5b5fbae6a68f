"""Model files: ``.keras`` archives with napari-gigapixel metadata, written atomically.

The metadata (geometry, model config, training config, history) lives as a
JSON entry inside the zip, so one file is the whole model; it can be read
without Keras (:func:`read_model_meta`).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from typing import TYPE_CHECKING, Any

from .errors import GigapixelError
from .geometry import Geometry

if TYPE_CHECKING:
    from .unet import ModelConfig

#: Name of the metadata entry added to the ``.keras`` zip.
META_ENTRY = "napari_gigapixel.json"
#: Format tag of that entry; a ``.keras`` file without it is foreign.
META_FORMAT = "napari-gigapixel-model"
META_VERSION = 1


class ModelFileError(GigapixelError):
    """A model file that cannot be used: missing, corrupt or not made by napari-gigapixel."""


def mark_white_balance(model: Any, model_config: Any) -> None:
    """Record on a Keras model whether it expects white-balanced pixels.

    ``model_config`` is a :class:`~.unet.ModelConfig`, its dict, or None (a
    file that records none: no balance). :func:`.model_io.load_model` and
    :func:`.model_io.save_model` mark the models they load and save, so
    :func:`.tiled_model.predict_array` and ``predict_whole`` know what a model expects.
    """
    if isinstance(model_config, dict):
        flag, local = model_config.get("white_balance"), model_config.get("white_field")
    else:
        flag = getattr(model_config, "white_balance", False)
        local = getattr(model_config, "white_field", False)
    model._gigapixel_white_balance = bool(flag)
    model._gigapixel_white_field = bool(flag and local)  # per place (.white_field)


def new_file_mode() -> int:
    """The permissions ``open()`` gives a new file here: ``0o666`` less the umask.

    Atomic writes go through :func:`tempfile.mkstemp`, whose files are 0600;
    renamed into place they would be the only outputs others cannot read. The
    umask is read from ``/proc`` where there is one: setting it to read it
    back would race with other threads creating files (napari's).
    """
    umask = 0o022
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
                    break
    except (OSError, ValueError):
        pass
    return 0o666 & ~umask


def save_model(
    model,
    path: str | os.PathLike,
    *,
    geometry: Geometry,
    model_config: ModelConfig | None = None,
    train_config: dict[str, Any] | None = None,
    history: list[dict[str, Any]] | None = None,
    validation: dict[str, Any] | None = None,
    resolution: dict[str, Any] | None = None,
) -> str:
    """Write ``model`` to a self-contained ``.keras`` file, atomically.

    Keras writes the zip (weights, and the optimizer state when the model was
    compiled with one, so training resumes exactly); the geometry, model
    config, training config and history are added as a JSON entry
    (:data:`META_ENTRY`) inside the same zip, with the validation
    bookkeeping (``validation``: best step, its Dice and file) and the working
    ``resolution`` the model was trained at (:func:`.resolution.model_resolution`:
    um/px when the slide had it, the downsample from level 0 always; absent =
    level 0) when given. The file appears under its name only once complete
    (temporary file in the same folder, then rename).

    Returns
    -------
    str
        The path written.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ModelFileError(f"{path}: a model file name must end with '.keras'.")
    folder = os.path.dirname(os.path.abspath(path))
    meta = {
        "format": META_FORMAT,
        "version": META_VERSION,
        "geometry": geometry.to_dict(),
        "model_config": model_config.to_dict() if model_config else None,
        "train_config": train_config or {},
        "history": history or [],
    }
    if model_config is not None:
        mark_white_balance(model, model_config)
    if validation is not None:
        meta["validation"] = validation
    if resolution is not None:
        meta["resolution"] = resolution
    tmp = ""
    try:
        os.makedirs(folder, exist_ok=True)
        # A temporary name in the same folder, then one rename: a reader (or a
        # kill -9 at any moment) sees the old file or the new one, never half.
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".keras", dir=folder)
        os.close(fd)
        os.chmod(tmp, new_file_mode())  # mkstemp's 0600 would outlive the rename
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(META_ENTRY, json.dumps(meta, default=str))
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # disk full, permissions: one line, the old file kept
            from .preflight import os_error_message

            raise ModelFileError(
                os_error_message(exc, path) + f" The previous {os.path.basename(path)} "
                "(if any) is unchanged."
            ) from exc
        raise
    return path


def read_model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read the napari-gigapixel metadata of a model file without loading Keras.

    Raises
    ------
    ModelFileError
        Missing, not a zip (corrupt or truncated), or a ``.keras`` file that
        napari-gigapixel did not write.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a folder, not a model file. Give the .keras file.")
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such model file. Check the path.")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if META_ENTRY not in names:
                raise ModelFileError(
                    f"{path}: a Keras file without napari-gigapixel metadata (a model "
                    "from another project?). Train one with 'napari-gigapixel train'."
                )
            meta = json.loads(zf.read(META_ENTRY))
    except (
        zipfile.BadZipFile,
        EOFError,
        OSError,
        ValueError,  # includes bad JSON and bad UTF-8
        KeyError,
        zlib.error,  # a corrupt deflate stream
        NotImplementedError,  # a compression method zipfile lacks
        RuntimeError,  # an encrypted entry
        RecursionError,  # absurdly nested JSON
    ) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(
            f"{path}: not a readable .keras model file (corrupt or truncated: {exc}). "
            "Use another checkpoint or retrain."
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise ModelFileError(
            f"{path}: its metadata is not napari-gigapixel's; use a model trained "
            "with napari-gigapixel."
        )
    g = meta.get("geometry")
    keys = ("stride", "output_stride", "rf_before", "rf_after")
    if not (
        isinstance(g, dict)
        and all(_whole(g.get(k)) for k in keys)
        and g["stride"] > 0
        and g["output_stride"] > 0
    ):
        raise ModelFileError(
            f"{path}: its metadata has no valid geometry (stride, output_stride, "
            "rf_before, rf_after as non-negative integers); the file is damaged. "
            "Use another checkpoint or retrain."
        )
    if meta.get("model_config") is not None and not isinstance(meta["model_config"], dict):
        raise ModelFileError(f"{path}: its model_config is not an object; the file is damaged.")
    return meta


def _whole(v: object) -> bool:
    """A non-negative whole number (JSON int, or a float like 4.0), not a bool."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    if isinstance(v, int):
        return 0 <= v < 2**31
    return 0 <= v < 2**31 and v.is_integer()


def load_model(path: str | os.PathLike):
    """Load a model saved by :func:`save_model`.

    Returns
    -------
    (keras.Model, dict)
        The model (with its optimizer state when it had one) and the metadata:
        ``geometry`` (a :class:`Geometry`), ``model_config`` (a
        :class:`ModelConfig` or None), ``train_config`` (dict) and ``history``.

    Raises
    ------
    ModelFileError
        For a missing, corrupt, truncated or foreign file; the message names it.
    """
    path = os.fspath(path)
    meta = read_model_meta(path)
    import keras

    from ._keras_layers import input_layer, wide_grad_conv

    input_layer(), wide_grad_conv()  # registers the layers the file may name
    try:
        model = keras.saving.load_model(path, compile=True)
    except Exception as exc:  # Keras raises many types for a damaged archive
        raise ModelFileError(
            f"{path}: Keras could not load this model ({type(exc).__name__}: {exc}). "
            "The file may be damaged; use another checkpoint or retrain."
        ) from exc
    g = meta["geometry"]
    meta = dict(meta)
    meta["geometry"] = Geometry(
        stride=int(g["stride"]),
        output_stride=int(g["output_stride"]),
        rf_before=int(g["rf_before"]),
        rf_after=int(g["rf_after"]),
    )
    if meta.get("model_config"):
        from .unet import ModelConfig  # here: unet re-exports this module

        meta["model_config"] = ModelConfig.from_dict(meta["model_config"])
    mark_white_balance(model, meta.get("model_config"))  # predict_array balances as predict
    model._gigapixel_resolution = meta.get("resolution")  # and cleans its mask as predict
    return model, meta
