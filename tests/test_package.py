"""The package stays light: importing it loads neither TensorFlow nor Qt."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import napari_gigapixel
import napari_gigapixel.core

HEAVY = ("tensorflow", "keras", "PyQt6", "PyQt5", "PySide6", "PySide2", "qtpy", "vispy")


def _modules_loaded_by(imports: list[str]) -> set[str]:
    """Import ``imports`` in a fresh interpreter and return the heavy modules it loaded."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {imports!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_package_import_loads_no_tensorflow_and_no_qt():
    assert _modules_loaded_by(["napari_gigapixel", "napari_gigapixel.core"]) == set()


def test_every_core_module_and_hook_is_light():
    core = [
        f"napari_gigapixel.core.{m.name}"
        for m in pkgutil.iter_modules(napari_gigapixel.core.__path__)
    ]
    # The reader, writer and sample hooks run inside napari for every file a user
    # opens, and the CLI starts before any job: none may pull in TF or Qt.
    hooks = [
        "napari_gigapixel._reader",
        "napari_gigapixel._writer",
        "napari_gigapixel._sample_data",
        "napari_gigapixel.cli",
    ]
    assert len(core) >= 8, core
    assert _modules_loaded_by(core + hooks) == set()


def test_version_is_a_string():
    assert isinstance(napari_gigapixel.__version__, str)
    assert napari_gigapixel.__version__.count(".") >= 2
