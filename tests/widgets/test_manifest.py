"""The npe2 manifest at the repository root is the one the installed package ships."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import npe2

ROOT = Path(__file__).resolve().parents[2]


def test_npe2_validate_passes_on_the_installed_plugin():
    exe = Path(sys.executable).with_name("npe2")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "npe2"]
    res = subprocess.run(
        [*cmd, "validate", "napari-gigapixel"], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout


def test_installed_manifest_is_the_repository_one():
    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-gigapixel")
    root = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.model_dump() == root.model_dump()


def test_every_python_name_imports():
    manifest = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    names = [c.python_name for c in manifest.contributions.commands or [] if c.python_name]
    assert len(names) >= 7
    for name in names:
        module, _, attr = name.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        assert callable(obj), name
    # Importing the widgets (and with them Qt) must still leave TensorFlow out.
    assert "tensorflow" not in sys.modules
