"""Train and predict through the core API, with no viewer (a server, a notebook).

Run::

    python examples/headless_train_predict.py --shape 1024x4096 --steps 60 --out /tmp/gp

It makes a synthetic slide with its ground truth, trains the default small
U-Net with exact streamed whole-slide steps, predicts the slide to an
OME-Zarr pyramid, and prints the Dice of the prediction beside the Otsu
tissue detector's. Every long call is a generator of events; this script
prints them as they come. Importing this loads TensorFlow (fine here: no
napari canvas in this process).
"""

from __future__ import annotations

import argparse
import json
import os

from napari_gigapixel.core import metrics
from napari_gigapixel.core.events import Finished, Message, StepEvent
from napari_gigapixel.core.inference import PredictConfig, open_prediction, predict
from napari_gigapixel.core.mask_io import load_mask
from napari_gigapixel.core.masks import AnnotationMask
from napari_gigapixel.core.slide import open_slide
from napari_gigapixel.core.synthetic import make_synthetic_slide, parse_shape
from napari_gigapixel.core.training import TrainConfig, train


def main(argv: list[str] | None = None) -> dict:
    """Make a slide, train, predict, evaluate; return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1024x4096", type=parse_shape)
    parser.add_argument("--steps", default=60, type=int)
    parser.add_argument("--lr", default=TrainConfig.lr, type=float)
    parser.add_argument("--out", default="gigapixel-example")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    slide, mask = make_synthetic_slide(
        os.path.join(args.out, "slide.tif"),
        shape=args.shape,
        seed=1,
        mask_out=os.path.join(args.out, "mask.tif"),
    )
    model_path = os.path.join(args.out, "model.keras")
    cfg = TrainConfig(images=[slide], masks=[mask], out=model_path, steps=args.steps, lr=args.lr)
    for ev in train(cfg):
        if isinstance(ev, StepEvent):
            print(
                f"step {ev.step}/{ev.total_steps}  loss {ev.loss:.4f}  Dice {ev.dice:.3f}  "
                f"{ev.seconds:.2f} s  {ev.n_tiles} tile(s)"
            )
        elif isinstance(ev, Message):
            print(ev.text)

    pred_path = os.path.join(args.out, "prediction.ome.zarr")
    pcfg = PredictConfig(model=model_path, image=slide, out=pred_path, overwrite=True)
    for ev in predict(pcfg):
        if isinstance(ev, Finished):
            print("prediction written:", pred_path)

    store = open_prediction(pred_path)
    truth = load_mask(mask, open_slide(slide).shape)  # lazy; level inferred
    shape = truth.shape
    pred = AnnotationMask(store.mask[0], store.downsample, name="prediction")
    figures = {
        "model": metrics.scores(metrics.confusion(pred, truth, shape=shape)),
        "otsu": metrics.scores(
            metrics.confusion(metrics.otsu_tissue_mask(slide), truth, shape=shape)
        ),
    }
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
