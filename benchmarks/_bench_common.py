"""What the speed benchmarks share: which model they measure."""

from __future__ import annotations


def add_model_size(p) -> None:
    """``--model-size``: the size preset measured (default: the training recipe's)."""
    from napari_gigapixel.core.train_config import TrainConfig
    from napari_gigapixel.core.unet import PRESETS, preset_name

    p.add_argument(
        "--model-size",
        choices=tuple(PRESETS),
        default=preset_name(TrainConfig().model),
        help="model size preset (default %(default)s, the recipe's; each figure in the README "
        "and docs/performance.md names the size it was measured with)",
    )
