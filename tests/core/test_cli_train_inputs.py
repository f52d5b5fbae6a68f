"""``train``, ``sample``, ``demo``: contradicting flags are usage errors, bad inputs are
refused before any compute, and every message names the right file or flag."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_gigapixel.cli import build_parser, main
from napari_gigapixel.core import _quiet_tf
from napari_gigapixel.core.masks import AnnotationMask, MaskError
from napari_gigapixel.core.training import TrainConfig, TrainConfigError, preflight


@pytest.fixture()
def pair(tmp_path):
    """A 128 x 192 slide, its dense 0/1 mask at 1/4, an all-zero mask and a 0/2 scribble."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (128, 192, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", img, photometric="rgb")
    tissue = (img[::4, ::4, 0] > 128).astype(np.uint8)
    tifffile.imwrite(tmp_path / "m.tif", tissue)
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros_like(tissue))
    tifffile.imwrite(tmp_path / "tissue_only.tif", tissue * 2)
    return tmp_path


@pytest.fixture()
def no_tensorflow(monkeypatch):
    """Fail the test if a run gets as far as loading TensorFlow."""

    def refuse() -> None:
        raise AssertionError("TensorFlow loaded before the input was refused")

    monkeypatch.setattr(_quiet_tf, "load_keras_quietly", refuse)


def _train(pair, *extra, mask="m.tif", out="o.keras"):
    argv = ["train", "--image", str(pair / "s.tif"), "--mask", str(pair / mask)]
    return main([*argv, "--out", str(pair / out), "--steps", "1", "--quiet", *extra])


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


# -- 1. flags that shape a new model contradict --resume -----------------------------


def test_new_model_flags_with_resume_are_a_usage_error(pair, capsys, no_tensorflow):
    extra = ["--resume", str(pair / "m.keras"), "--model-size", "large", "--input-transform"]
    code = _train(pair, *extra, "od", "--output-stride", "1", "--no-white-balance")
    assert code == 2
    err = _one_line(capsys)
    for flag in ("--model-size", "--input-transform", "--output-stride", "--no-white-balance"):
        assert flag in err
    assert "keeps its own" in err and "--seed" not in err


def test_resume_alone_and_fresh_runs_keep_the_recipe_defaults():
    from napari_gigapixel.cli.train import build_config

    base = ["train", "--image", "a.tif", "--mask", "m.tif", "--out", "m.keras"]
    d = TrainConfig()
    for extra in ([], ["--resume", "m.keras"]):
        cfg = build_config(build_parser().parse_args([*base, *extra]))
        assert cfg.model == d.model and cfg.tile == d.tile
        assert (cfg.white_balance, cfg.standardize, cfg.head_prior) == (
            d.white_balance,
            d.standardize,
            d.head_prior,
        )
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "(default medium)" in help_text.replace("\n", " ").replace("  ", " ")


# -- 2. --tile with --mode whole ---------------------------------------------------


def test_tile_with_mode_whole_is_a_usage_error(pair, capsys, no_tensorflow):
    assert _train(pair, "--mode", "whole", "--tile", "128") == 2
    err = _one_line(capsys)
    assert "--tile" in err and "--mode whole" in err


# -- 3, 4. masks that teach nothing, refused before the slide is decoded --------------


@pytest.mark.parametrize(
    ("mask", "kind", "says"),
    [
        ("zero.tif", [], "zero.tif: the mask has no tissue (all zero) over the training region"),
        ("m.tif", ["--mask-kind", "scribble"], "m.tif: the scribble mask has no tissue (2) label"),
        ("tissue_only.tif", ["--mask-kind", "scribble"], "has no background (1) label"),
    ],
)
def test_a_mask_without_tissue_or_a_class_is_refused_in_preflight(
    pair, capsys, no_tensorflow, mask, kind, says
):
    assert _train(pair, *kind, mask=mask) == 1
    err = _one_line(capsys)
    assert says in err and "s.tif" in err
    if kind:
        assert "1 background and 2 tissue" in err and "--mask-kind dense" in err
    assert not (pair / "o.keras").exists()


def test_a_validation_roi_holding_all_the_tissue_is_refused_in_preflight(
    pair, capsys, no_tensorflow
):
    assert _train(pair, "--val-roi", "0,0,128,192") == 1
    err = _one_line(capsys)
    assert "s.tif: the validation ROI (0, 0, 128, 192) covers all the labelled tissue" in err


def test_the_label_checks_take_arrays_as_the_widget_gives_them(pair, no_tensorflow):
    cfg = TrainConfig(
        images=[str(pair / "s.tif")],
        masks=[np.zeros((32, 48), np.uint8)],
        out=str(pair / "o.keras"),
    )
    with pytest.raises(MaskError, match="no tissue"):
        preflight(cfg)
    cfg.masks = [np.ones((32, 48), np.uint8)]
    preflight(cfg)  # the dense rule asks for tissue only


def test_a_huge_mask_is_scanned_in_bands_and_only_until_the_answer_is_known(monkeypatch):
    from napari_gigapixel.core import train_preflight as tp

    class Counted:
        """A mask array that counts the pixels read from it."""

        def __init__(self, a: np.ndarray) -> None:
            self.a, self.shape, self.dtype, self.read = a, a.shape, a.dtype, 0

        def __getitem__(self, key):
            block = self.a[key]
            self.read += block.size
            return block

    monkeypatch.setattr(tp, "SCAN_PIXELS", 1000)
    a = np.zeros((400, 100), np.uint8)
    a[5, 5] = 1
    arr = Counted(a)
    mask = AnnotationMask(arr, 1.0, "dense", "big.tif")
    found, kept = tp.scan_labels(mask, (0, 0, 400, 100))
    assert "tissue" in found and arr.read == 1000  # the first band held the tissue
    arr.read = 0
    found, kept = tp.scan_labels(mask, (0, 0, 400, 100), exclude=(0, 0, 50, 100))
    assert "tissue" in found and "tissue" not in kept and arr.read == a.size  # every band
    arr.read = 0
    with pytest.raises(MaskError, match="no tissue"):
        tp.check_labels(mask, (100, 0, 400, 100), "big slide")
    assert arr.read == 300 * 100


def test_a_mask_or_a_prediction_given_as_the_slide_is_refused(pair, capsys, no_tensorflow):
    # The mask file where the slide goes: predict's words, before anything runs.
    argv = ["train", "--image", str(pair / "m.tif"), "--mask", str(pair / "m.tif")]
    assert main([*argv, "--out", str(pair / "o.keras"), "--steps", "1", "--quiet"]) == 1
    err = _one_line(capsys)
    assert "m.tif: a tissue mask (label values), not a slide; give the slide it annotates" in err
    assert not (pair / "o.keras").exists()


def test_a_mask_as_the_validation_slide_is_refused_too(pair, capsys, no_tensorflow):
    assert _train(pair, "--val-image", str(pair / "m.tif"), "--val-mask", str(pair / "m.tif")) == 1
    assert "m.tif: a tissue mask (label values), not a slide" in _one_line(capsys)


def test_distributed_training_checks_the_labels_before_reaching_the_cluster(pair, no_tensorflow):
    # Nothing listens on port 9: a label check after connecting would fail on
    # the address instead; the client sees the files, so the mask is refused first.
    cfg = TrainConfig(
        images=[str(pair / "s.tif")],
        masks=[str(pair / "zero.tif")],
        out=str(pair / "o.keras"),
        scheduler="tcp://127.0.0.1:9",
    )
    from napari_gigapixel.core.training import train

    with pytest.raises(MaskError, match="zero.tif: the mask has no tissue"):
        next(iter(train(cfg)))


def test_a_scheduler_that_is_no_address_has_predicts_words(pair, capsys):
    assert _train(pair, "--scheduler", "localhost") == 2
    err = _one_line(capsys)
    says = "scheduler must be a dask.distributed address like tcp://host:8786, not 'localhost'"
    assert says in err


# -- 5. flags the configuration refuses -----------------------------------------------


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--pen-weight", "4", "--augment", "none"], "pen_weight (--pen-weight)"),
        (["--augment", "ink", "--no-white-balance"], "needs white_balance (--white-balance)"),
    ],
)
def test_flags_the_configuration_refuses_are_usage_errors(pair, capsys, extra, says):
    assert _train(pair, *extra) == 2
    assert says in _one_line(capsys)


def test_the_python_api_still_raises_train_config_error(pair):
    cfg = TrainConfig(
        images=[str(pair / "s.tif")],
        masks=[str(pair / "m.tif")],
        out=str(pair / "o.keras"),
        augment="none",
        pen_weight=4,
    )
    with pytest.raises(TrainConfigError, match="pen_weight"):
        preflight(cfg)


# -- 6. messages that name the right thing ------------------------------------------------


def test_a_folder_to_resume_from_is_named_a_folder(pair, capsys, no_tensorflow):
    (pair / "d.keras").mkdir()
    assert _train(pair, "--resume", str(pair / "d.keras")) == 1
    err = _one_line(capsys)
    assert "d.keras: is a folder, not a model file" in err and "no such" not in err


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--hard-out", "{out}"], "--hard-out"),
        (["--mask-out", "{out}"], "--mask-out"),
        (["--hard-out", "{mask}"], "--hard-out"),
    ],
)
def test_sample_names_the_flag_whose_path_clashes(tmp_path, capsys, extra, says):
    out, mask = tmp_path / "s4.tif", tmp_path / "s4_mask.tif"
    extra = [e.format(out=out, mask=mask) for e in extra]
    assert main(["sample", str(out), "--shape", "256x256", "--quiet", *extra]) == 2
    err = _one_line(capsys)
    assert err.split("error: ")[1].startswith(says) and "same file" in err
    assert not out.exists()


def test_demo_out_dir_that_is_a_file_says_so(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--out-dir", str(afile), "--quiet"]) == 1
    err = _one_line(capsys)
    assert "afile: is a file, not a folder" in err
    assert afile.read_text() == "x"
