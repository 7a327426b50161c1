"""``convert-midog`` and the COCO options `train-detector` and `evaluate-detector` share:
MIDOG 2021 / MIDOG++ databases (COCO JSON + a folder of images) as training and test data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_mitosis.cli.options import CommandAdder, add_overwrite

BOX_FORMATS = ("auto", "xywh", "xyxy")  # `io.coco.BOX_FORMATS`, without importing NumPy


def add_coco_options(parser: argparse.ArgumentParser, where: Any = None) -> None:
    """``--coco FILE`` (in ``where``, a mutually exclusive group, when given), with
    ``--tumour-type`` and ``--coco-boxes``."""
    (where or parser).add_argument(
        "--coco",
        type=Path,
        help="one COCO detection JSON for the image folder (MIDOG 2021/MIDOG++ included: "
        "'not mitotic figure' boxes are imposters, used as hard negatives, never counted)",
    )
    _add_selection(parser)


def _add_selection(parser: argparse.ArgumentParser) -> None:
    """``--tumour-type`` and ``--coco-boxes``: which images of a COCO file, read how."""
    parser.add_argument(
        "--tumour-type",
        "--tumor-type",
        dest="tumour_types",
        nargs="+",
        metavar="TYPE",
        help="only images of these tumour types (the COCO file's tumor_type)",
    )
    parser.add_argument(
        "--coco-boxes",
        choices=BOX_FORMATS,
        default="auto",
        help="bbox as COCO's x,y,w,h or corners x1,y1,x2,y2 (auto: corners for MIDOG's "
        "categories, else whichever fits the images)",
    )


def _convert_midog(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_mitosis.io.coco import read_coco
    from napari_mitosis.io.geojson import REVIEW_CLASSES, Annotation, write_geojson
    from napari_mitosis.io.output_file import refuse_existing

    database = read_coco(args.coco, args.coco_boxes).select(args.tumour_types)
    paths = [args.out / f"{Path(i.file_name).stem}.geojson" for i in database.images]
    refuse_existing(paths, overwrite=args.overwrite)
    args.out.mkdir(parents=True, exist_ok=True)
    totals = [0, 0]
    for image, path in zip(database.images, paths, strict=True):
        annotations = []
        for boxes, name in (
            (image.mitoses, REVIEW_CLASSES["accepted"]),  # the experts' consensus figures
            (image.imposters, REVIEW_CLASSES["rejected"]),  # their look-alikes
        ):
            for x0, y0, x1, y1 in boxes:
                if args.points:
                    coords, kind = np.array([[(y0 + y1) / 2, (x0 + x1) / 2]]), "point"
                else:
                    coords = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
                    kind = "rectangle"
                annotations.append(
                    Annotation(coords, kind, name, properties={"tumor_type": image.tumour_type})
                )
        totals[0] += len(image.mitoses)
        totals[1] += len(image.imposters)
        write_geojson(path, annotations, overwrite=args.overwrite)
    types = ", ".join(f"{t or 'unnamed'} {n}" for t, n in sorted(database.tumour_types().items()))
    print(
        f"{args.coco}: {len(paths)} images ({types}), {totals[0]} mitotic figures "
        f"('{REVIEW_CLASSES['accepted']}') and {totals[1]} imposters "
        f"('{REVIEW_CLASSES['rejected']}'), boxes read as {database.box_format} → {args.out}/"
    )
    return 0


def register(command: CommandAdder) -> None:
    cm = command("convert-midog", "MIDOG/COCO JSON → one QuPath GeoJSON per image")
    cm.add_argument("coco", type=Path, help="MIDOG++.json, MIDOG 2021's, or any COCO file")
    cm.add_argument("--out", type=Path, required=True, help="output folder")
    cm.add_argument(
        "--points", action="store_true", help="box centres as points (default: rectangles)"
    )
    _add_selection(cm)
    add_overwrite(cm)
    cm.set_defaults(run=_convert_midog)
