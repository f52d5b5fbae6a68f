"""``napari-gigapixel sample``: write a synthetic slide and its tissue mask.

Generates a deterministic whole-slide image of any size tile by tile
(pyramidal OME-TIFF, JPEG by default) and its ground-truth mask (pyramidal
TIFF, lossless) beside it, then prints the two paths. Both state their pixel
size (--mpp, microns per pixel) as a scanner's files do. ``--family`` picks
the kind of slide: the synthetic H&E (default), or real tissue texture from a
photograph that scikit-image ships (``ihc``, ``ihc-as-he``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..core.texture_slides import FAMILIES
from . import UserError
from ._common import EXIT_OK, add_overwrite, add_report, integer, number, print_json, stopped_exit


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``sample`` sub-command."""
    p = sub.add_parser(
        "sample",
        help="write a synthetic slide with its ground-truth mask",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("out", help="slide path, e.g. slide.ome.tif")
    p.add_argument(
        "--shape",
        default="4096x16384",
        help="level-0 size HEIGHTxWIDTH (default: %(default)s; the paper's is 16000x64000)",
    )
    p.add_argument(
        "--seed", type=integer("--seed", 0), default=0, help="random seed (default: %(default)s)"
    )
    p.add_argument(
        "--family",
        choices=FAMILIES,
        default="synthetic-he",
        help="kind of slide (default: %(default)s): the synthetic H&E, real IHC texture, "
        "or that texture recoloured as H&E",
    )
    p.add_argument("--mask-out", default=None, help="mask path (default: <stem>_mask.tif)")
    p.add_argument(
        "--compression",
        choices=("jpeg", "deflate", "zstd", "none"),
        default="jpeg",
        help="slide compression (default: %(default)s); the mask is always lossless",
    )
    p.add_argument(
        "--mpp",
        type=number("--mpp", 0, above=True),
        default=0.5,
        metavar="UM",
        help="microns per level-0 pixel written into the files' OME-TIFF metadata and "
        "resolution tags (default: %(default)s, a 20x scan; 0.25 is a 40x scan)",
    )
    p.add_argument(
        "--hard-out",
        default=None,
        help="also write the hard negatives (glass under pen 1, dust 2, bubble rims 3) here",
    )
    add_overwrite(p, "the slide and mask files")
    add_report(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the pair with a tqdm progress bar; print both paths; 0 on success."""
    from ..core.synthetic import SyntheticError, check_mpp, default_mask_path, parse_shape
    from ..core.texture_slides import iter_make_family_slide
    from ._progress import follow

    try:
        shape = parse_shape(args.shape)
    except SyntheticError as exc:
        raise UserError(f"--shape: {exc}") from exc
    try:
        mpp = check_mpp(args.mpp)
    except SyntheticError as exc:
        raise UserError(f"--mpp: {exc}") from exc
    out = Path(args.out)
    mask = Path(args.mask_out) if args.mask_out else default_mask_path(out)
    from ..core.preflight import check_output

    hard = Path(args.hard_out) if args.hard_out else None
    _check_distinct(out, mask, hard, mask_given=bool(args.mask_out))
    for path in (out, mask, hard):
        if path is not None:
            check_output(path, overwrite=args.overwrite, what="slide")
    events = iter_make_family_slide(
        os.fspath(out),
        family=args.family,
        shape=shape,
        seed=args.seed,
        mask_out=os.fspath(mask),
        hard_out=None if hard is None else os.fspath(hard),
        compression=args.compression,
        mpp=mpp,
    )
    finished = follow(events, unit="tile", quiet=args.quiet)
    if finished is None or finished.stopped:
        return stopped_exit("sample", args.quiet)
    result = finished.result
    if args.json:
        print_json(result)
    else:
        print(result["slide"])
        print(result["mask"])
        if result["hard"]:
            print(result["hard"])
    return EXIT_OK


def _check_distinct(out: Path, mask: Path, hard: Path | None, *, mask_given: bool) -> None:
    """Refuse two outputs on one path (usage, exit 2), naming the flag that clashes.

    The writer only knows its files, not which flag named them, so the check
    is made here, before any existing file is looked at.
    """
    mask_flag = "--mask-out" if mask_given else "the mask (--mask-out, default <stem>_mask.tif)"
    named = [("the slide (OUT)", out), (mask_flag, mask)]
    if hard is not None:
        named.append(("--hard-out", hard))
    for i, (what, path) in enumerate(named):
        for other, earlier in named[:i]:
            if path.resolve() == earlier.resolve():
                raise UserError(
                    f"{what} {path} is the same file as {other}; give each output its own path."
                )
