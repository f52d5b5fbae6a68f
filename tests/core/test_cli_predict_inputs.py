"""``napari-gigapixel predict`` inputs: what is a slide, what an output may replace, words.

Each test is one defect a reviewer found: an output that replaced its own slide,
a folder run that predicted its earlier predictions, a mask or a prediction
taken as a slide, a broken ``.tif`` quietly left out of a folder, a scheduler
value quietly ignored (or a dead one found after 30 s), a list file that is not
text, and the overwrite refusal in words of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

pytest.importorskip("tensorflow")

from napari_gigapixel.cli import main  # noqa: E402

SHAPE = (256, 384)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny slide, its mask (as 'sample' writes it), a zarr pyramid of it, a model."""
    from napari_gigapixel.core.pyramid import build_pyramid
    from napari_gigapixel.core.synthetic import make_synthetic_slide
    from napari_gigapixel.core.unet import build_unet, model_geometry, preset_config, save_model

    d = tmp_path_factory.mktemp("inputs")
    slide, mask = make_synthetic_slide(d / "a.tif", shape=SHAPE, seed=3, tile=256)
    for _ in build_pyramid(str(slide), str(d / "a.zarr")):
        pass
    model = build_unet(preset_config("small"), seed=0)
    save_model(model, d / "m.keras", geometry=model_geometry(model))
    return d, str(slide), str(mask), str(d / "m.keras")


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if predict loads the model (its checks must come first)."""
    from napari_gigapixel.core import tiled_model

    def refuse(self):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(tiled_model.ModelRef, "load", refuse)


def _predict(model: str, *args: str) -> list[str]:
    return ["predict", "--model", model, "--tta", "none", "--quiet", *args]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


# 1. An output that is, lies inside, or holds an input slide -------------------------------


@pytest.mark.parametrize(
    ("out", "words"),
    [
        ("a.zarr", "a.zarr: the output is the input slide"),
        ("a.zarr/x.zarr", "a.zarr/x.zarr: the output lies inside the input slide a.zarr"),
        (".", ".: the output holds the input slide a.zarr"),
    ],
)
def test_an_output_never_replaces_its_slide(
    files, tmp_path, monkeypatch, capsys, no_model_load, out, words
):
    d, _, _, model = files
    shutil.copytree(d / "a.zarr", tmp_path / "a.zarr")
    before = sorted(os.listdir(tmp_path / "a.zarr"))
    monkeypatch.chdir(tmp_path)
    assert main(_predict(model, "--image", "a.zarr", "--out", out, "--overwrite")) == 1
    err = _one_line(capsys)
    assert words in err and "choose another output path" in err
    assert sorted(os.listdir(tmp_path / "a.zarr")) == before  # the slide is untouched


def test_an_output_never_replaces_the_model(files, tmp_path, capsys, no_model_load):
    _, slide, _, model = files
    shutil.copy(model, tmp_path / "m.keras")
    argv = _predict(str(tmp_path / "m.keras"), "--image", slide, "--out", str(tmp_path))
    assert main([*argv, "--overwrite"]) == 1
    assert "the output holds the input model" in _one_line(capsys)
    assert (tmp_path / "m.keras").is_file()


# 2. A folder predicted into itself twice ---------------------------------------------------


def test_a_folder_into_itself_twice_predicts_only_its_slides(files, tmp_path, capsys):
    _, slide, _, model = files
    coh = tmp_path / "coh"
    coh.mkdir()
    for name in ("a.tif", "b.tif"):
        shutil.copy(slide, coh / name)
    argv = _predict(model, "--image", str(coh), "--out", str(coh), "--overwrite", "--json")
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 0  # the first run's a_pred.zarr, b_pred.zarr are not slides
    res = _last_json(capsys.readouterr().out)
    assert res["total"] == 2 and res["ok"] == 2
    assert sorted(os.path.basename(p) for p in res["skipped"]) == ["a_pred.zarr", "b_pred.zarr"]
    assert sorted(os.listdir(coh)) == ["a.tif", "a_pred.zarr", "b.tif", "b_pred.zarr"]


def test_an_output_that_is_another_slide_of_the_run_is_refused(
    files, tmp_path, capsys, no_model_load
):
    d, slide, _, model = files
    shutil.copy(slide, tmp_path / "x.tif")
    # A slide (a pyramid) that happens to have the name x.tif's prediction gets.
    shutil.copytree(d / "a.zarr", tmp_path / "x_pred.zarr")
    argv = ["--image", str(tmp_path / "x.tif"), "--image", str(tmp_path / "x_pred.zarr")]
    assert main(_predict(model, *argv, "--out", str(tmp_path), "--overwrite")) == 1
    assert "x_pred.zarr: the output is the input slide" in _one_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["x.tif", "x_pred.zarr"]


# 3. A mask or a prediction given as a slide ------------------------------------------------


def test_a_mask_or_a_prediction_is_not_a_slide(files, tmp_path, capsys, monkeypatch):
    import numpy as np

    from napari_gigapixel.core.mask_io import write_mask

    _, slide, mask, model = files
    monkeypatch.chdir(tmp_path)
    assert main(_predict(model, "--image", slide, "--out", "p.zarr")) == 0
    stored = write_mask("s.zarr", np.full((64, 96), 255, np.uint8))  # records its kind
    from napari_gigapixel.core import tiled_model

    monkeypatch.setattr(tiled_model.ModelRef, "load", lambda self: 1 / 0)
    for image, words in [
        (mask, "a tissue mask (label values), not a slide; give the slide it annotates"),
        (stored, "a tissue mask"),
        ("p.zarr", "p.zarr: a prediction written by 'napari-gigapixel predict', not a slide"),
    ]:
        assert main(_predict(model, "--image", image, "--out", "q.zarr")) == 1
        assert words in _one_line(capsys)
    assert not (tmp_path / "q.zarr").exists()


# 4. A file named like a slide in a folder, that is not one ---------------------------------


def test_a_broken_slide_in_a_folder_is_reported_not_skipped(files, tmp_path, capsys):
    _, slide, mask, model = files
    coh = tmp_path / "coh"
    coh.mkdir()
    shutil.copy(slide, coh / "a.tif")
    shutil.copy(mask, coh / "a_mask.tif")  # a mask beside its slide: left out, said
    (coh / "zz.tif").write_text("not an image\n")
    (coh / "notes.txt").write_text("a text file is not taken for a slide\n")
    argv = _predict(model, "--image", str(coh), "--out", str(tmp_path / "out"), "--json")
    assert main(argv) == 1
    res = _last_json(capsys.readouterr().out)
    assert (res["total"], res["ok"], res["failed"]) == (2, 1, 1)
    bad = [r for r in res["slides"] if not r["ok"]]
    assert bad[0]["image"].endswith("zz.tif") and "not a slide" in bad[0]["error"]
    assert [os.path.basename(p) for p in res["skipped"]] == ["a_mask.tif"]
    assert os.listdir(tmp_path / "out") == ["a_pred.zarr"]


# 5. The scheduler: a value that is no address, a scheduler that does not answer ------------


def _train_words(value: str) -> str:
    from napari_gigapixel.core.train_config import TrainConfig, TrainConfigError, _validate

    with pytest.raises(TrainConfigError) as exc:
        _validate(TrainConfig(images=["a.tif"], masks=["m.tif"], scheduler=value))
    return str(exc.value)


@pytest.mark.parametrize("value", ["nonsense", "processes"])
@pytest.mark.parametrize("many", [False, True])
def test_a_scheduler_that_is_no_address_is_refused_as_train_does(
    files, tmp_path, capsys, no_model_load, value, many
):
    _, slide, _, model = files
    images = ["--image", slide] * (2 if many else 1)
    out = str(tmp_path / ("o" if many else "o.zarr"))
    assert main(_predict(model, *images, "--out", out, "--scheduler", value)) == 1
    assert _one_line(capsys) == f"napari-gigapixel predict: error: {_train_words(value)}"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("many", [False, True])
def test_an_unreachable_scheduler_is_one_line_in_seconds(
    files, tmp_path, capsys, no_model_load, many
):
    _, slide, _, model = files
    images = ["--image", slide] * (2 if many else 1)
    out = str(tmp_path / ("o" if many else "o.zarr"))
    t0 = time.perf_counter()
    argv = _predict(model, *images, "--out", out, "--scheduler", "tcp://127.0.0.1:1")
    assert main(argv) == 1
    assert time.perf_counter() - t0 < 10  # not dask's 30 s of retries
    err = _one_line(capsys)
    assert "tcp://127.0.0.1:1: cannot reach the dask scheduler" in err
    assert "start it (dask scheduler / dask worker) or check the address" in err
    assert not os.path.exists(out) or os.listdir(out) == []


# 6. A list file that is not UTF-8 text ----------------------------------------------------


@pytest.mark.parametrize(
    "content", ["a.tif\nb.tif\n".encode("utf-16"), bytes(range(256)), b"a.tif\x00\x00\n"]
)
def test_a_list_that_is_not_text_is_one_line(files, tmp_path, capsys, content):
    _, _, _, model = files
    lst = tmp_path / "list.txt"
    lst.write_bytes(content)
    assert main(_predict(model, "--image", str(lst), "--out", str(tmp_path / "o"))) == 1
    err = _one_line(capsys)
    assert f"{lst}: not a UTF-8 text list of slide paths" in err


def test_a_utf8_list_with_a_byte_order_mark_is_read(files, tmp_path):
    from napari_gigapixel.core.predict_many import expand_images

    _, slide, _, _ = files
    lst = tmp_path / "list.txt"
    lst.write_text(f"{slide}\n", encoding="utf-8-sig")  # as Windows Notepad saves it
    assert expand_images([str(lst)]) == [slide]


# 7. The overwrite refusal and the paths in predict's errors --------------------------------


def test_predict_says_what_the_other_commands_say(files, tmp_path, capsys, monkeypatch):
    _, slide, _, model = files
    shutil.copy(slide, tmp_path / "s.tif")
    monkeypatch.chdir(tmp_path)
    argv = _predict(model, "--image", "s.tif", "--out", "p.zarr")
    assert main(argv) == 0
    assert main(argv) == 1
    assert _one_line(capsys) == (
        "napari-gigapixel predict: error: p.zarr already exists; pass --overwrite to replace it."
    )
    # pyramid's words for the same thing, and paths as typed in both.
    assert main(["pyramid", "s.tif", "p.zarr"]) == 1
    assert _one_line(capsys) == (
        "napari-gigapixel pyramid: error: p.zarr already exists; pass --overwrite to replace it."
    )
    assert main(_predict("nope.keras", "--image", "s.tif", "--out", "q.zarr")) == 1
    err = _one_line(capsys)
    assert "nope.keras" in err and str(tmp_path) not in err
