"""Predicting many slides: lists and folders, one failure reported, locally and on a cluster."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from napari_gigapixel.cli import main  # noqa: E402
from napari_gigapixel.core.predict_many import (  # noqa: E402
    SlideListError,
    expand_images,
    output_paths,
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import tifffile

    from napari_gigapixel.core.unet import ModelConfig, build_unet, model_geometry, save_model

    d = tmp_path_factory.mktemp("many")
    slides = d / "slides"
    slides.mkdir()
    rng = np.random.default_rng(0)
    for name, shape in [("a", (256, 512)), ("b", (320, 384))]:
        img = rng.integers(120, 250, (*shape, 3), dtype=np.uint8)
        tifffile.imwrite(slides / f"{name}.tif", img, tile=(128, 128))
    # Looks like a slide by name, but is not one: this slide must fail alone.
    (d / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    model = build_unet(ModelConfig(), seed=0)
    save_model(model, d / "m.keras", geometry=model_geometry(model))
    return d, [str(slides / "a.tif"), str(d / "broken.tif"), str(slides / "b.tif")]


def test_lists_folders_and_output_names(files, tmp_path):
    d, (a, broken, b) = files
    lst = tmp_path / "cohort.txt"
    rel = os.path.relpath(b, tmp_path)  # relative to the list file's folder
    lst.write_text(f"# cohort\n{a}\n\n{rel}\n")
    assert expand_images([str(lst)]) == [a, os.path.join(str(tmp_path), rel)]
    assert expand_images([str(d / "slides")]) == [a, b]
    assert expand_images([str(d / "slides"), broken]) == [a, b, broken]
    outs = output_paths(["x/s.ome.tif", "y/s.tif", "z/t.svs"], "out")
    assert outs == ["out/s_pred.zarr", "out/s_1_pred.zarr", "out/t_pred.zarr"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideListError, match="no slide files"):
        expand_images([str(tmp_path / "empty")])


def _check(res, out_dir, broken):
    assert res["total"] == 3 and res["ok"] == 2 and res["failed"] == 1
    bad = [r for r in res["slides"] if not r["ok"]]
    assert bad[0]["image"] == broken and "broken.tif" in bad[0]["error"]
    assert sorted(os.listdir(out_dir)) == ["a_pred.zarr", "b_pred.zarr"]
    for r in res["slides"]:
        if r["ok"]:
            assert os.path.exists(os.path.join(r["out"], ".zattrs")) and r["mpx_per_s"] > 0


def test_one_failed_slide_does_not_stop_the_others(files, tmp_path, capsys):
    d, (a, broken, b) = files
    out = tmp_path / "preds"
    argv = ["predict", "--model", str(d / "m.keras"), "--out", str(out), "--json"]
    argv += ["--min-width-um", "0", "--min-object-um2", "123"]  # passed to every slide
    rc = main([*argv, "--image", a, "--image", broken, "--image", b])
    cap = capsys.readouterr()
    assert rc == 1
    assert "FAILED" in cap.err and "broken.tif" in cap.err
    res = json.loads(cap.out.strip().splitlines()[-1])
    _check(res, out, broken)
    for r in res["slides"]:
        if r["ok"]:
            assert (r["clean"]["min_width_um"], r["clean"]["min_object_um2"]) == (0.0, 123.0)


def test_many_slides_on_a_cluster(files, tmp_path, capsys):
    from distributed import LocalCluster

    d, (a, broken, b) = files
    lst = tmp_path / "cohort.txt"
    lst.write_text("\n".join([a, broken, b]))
    out = tmp_path / "preds"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        rc = main(
            [
                "predict",
                "--model",
                str(d / "m.keras"),
                "--image",
                str(lst),
                "--out",
                str(out),
                "--scheduler",
                cluster.scheduler_address,
                "--json",
                "--quiet",
            ]
        )
    assert rc == 1
    _check(json.loads(capsys.readouterr().out.strip().splitlines()[-1]), out, broken)
