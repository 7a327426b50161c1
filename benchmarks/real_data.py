"""The shipped recipes on the real samples in ../shared/data, held out by slide or image.

    python benchmarks/real_data.py [--only atypical-mitosis ultrasound mitosis-crops
        mitosis-crops-no-negatives camelyon-patches] [--work DIR]

- atypical vs normal mitosis (recipes/atypical-mitosis.yaml): train-classifier holds out
  20 % of the slides for test itself and prints the held-out metrics;
  then ``subtype`` scores the same held-out figures on the real job's terms: pasted into
  whole fields at known places, read back through a slide, at the exact centre and with
  the centre off by up to 2 µm (a detector's box centre is not the figure's);
- ultrasound benign vs malignant (recipes/ultrasound.yaml): 20 % of the images held out;
- the centred-crops mitosis detector (recipes/mitosis-crops.yaml): 20 % of the slides are
  held out here (symbolic links into two folders), the detector trains and validates on
  the rest with CMU-1-Small-Region's upper half as negative tissue, and
  evaluate-detector --centred-crops scores the held-out crops and counts its false
  candidates on the lower half (no figure there: every candidate is false);
  ``mitosis-crops-no-negatives`` trains the same recipe without negative tissue.
Each prints one JSON line of held-out numbers; nothing is tuned on them.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLI = [sys.executable, "-m", "napari_mitosis"]
CMU = DATA / "slides" / "CMU-1-Small-Region.svs"
#: CMU-1-Small-Region (2967 × 2220 px): the upper half trains, the lower half is held out.
NEGATIVES_TRAIN, NEGATIVES_TEST = f"{CMU}@0,0,1483,2220", f"{CMU}@1483,0,2967,2220"


def run(command: list[str]) -> str:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    print(f"  ({time.perf_counter() - started:.0f} s) {' '.join(command[2:5])} …", flush=True)
    return result.stdout


def held_out_line(printed: str) -> str:
    return next(line for line in printed.splitlines() if line.startswith("AUC ")).strip()


def classifier(name: str, data: Path, work: Path) -> None:
    out = work / f"{name}.safetensors"
    printed = run(
        [
            *CLI,
            "train-classifier",
            str(data),
            "--recipe",
            str(ROOT / "recipes" / f"{name}.yaml"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--overwrite",
        ]
    )
    print(f"{name}: {held_out_line(printed)}")


def subtype_fields(model: Path, work: Path, shift_um: float = 2.0) -> None:
    """The classifier's held-out figures (its ``.test.csv``) pasted into one field, 16 px
    of glass between them, and scored by ``subtype`` at the exact centres and at centres
    moved by up to ``shift_um`` µm; AUC against the crop path's."""
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    from napari_mitosis.io.geojson import Annotation, read_geojson, write_geojson
    from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff

    with model.with_suffix(".test.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([r["label"] == "atypical" for r in rows])
    crop_auc = roc_auc_score(labels, [float(r["score"]) for r in rows])
    side, gap, per_row = 128, 16, 24
    field = np.full(
        (-(-len(rows) // per_row) * (side + gap), per_row * (side + gap), 3), 240, np.uint8
    )
    centres = []
    for i, row in enumerate(rows):
        y, x = (i // per_row) * (side + gap), (i % per_row) * (side + gap)
        field[y : y + side, x : x + side] = np.asarray(Image.open(row["file"]).convert("RGB"))
        centres.append((y + 64.0, x + 64.0))
    slide = write_pyramid_tiff(work / "figures.tif", field, mpp=(0.25, 0.25), overwrite=True)
    rng = np.random.default_rng(0)
    results = {"crops": len(rows), "crop_auc": round(crop_auc, 4)}
    for name, shift in (("exact", 0.0), (f"within_{shift_um:g}_um", shift_um / 0.25)):
        moved = np.asarray(centres) + rng.uniform(-shift, shift, (len(centres), 2))
        points = [Annotation(np.array([c]), "point", "Mitosis candidate") for c in moved]
        given = write_geojson(work / f"figures-{name}.geojson", points, overwrite=True)
        out = work / f"subtype-{name}"
        run([*CLI, "subtype", str(slide), "--detections", str(given), "--model", str(model),
             "--out", str(out), "--device", "cpu", "--overwrite"])  # fmt: skip
        p = [a.measurements["p_atypical"] for a in read_geojson(out / "figures.mitoses.geojson")]
        results[f"subtype_auc_{name}"] = round(roc_auc_score(labels, p), 4)
    print(f"atypical-mitosis on whole fields: {json.dumps(results)}")


def split_crops(data: Path, work: Path, fraction: float = 0.2, seed: int = 0) -> tuple[Path, Path]:
    """Two folders of links (train, test) to the crops, whole slides on each side."""
    with (data / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    slides = sorted({r["slide"] for r in rows})
    rng = np.random.default_rng(seed)
    test_slides = set(rng.choice(slides, max(1, round(len(slides) * fraction)), replace=False))
    folders = {"train": work / "crops-train", "test": work / "crops-test"}
    tables = {k: ["file,slide"] for k in folders}
    for r in rows:
        side = "test" if r["slide"] in test_slides else "train"
        link = folders[side] / r["file"]
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(data / r["file"])
        tables[side].append(f"{r['file']},{r['slide']}")
    for side, folder in folders.items():
        (folder / "labels.csv").write_text("\n".join(tables[side]) + "\n")
    print(f"  {len(slides) - len(test_slides)} training slides, {len(test_slides)} test slides")
    return folders["train"], folders["test"]


def detector(work: Path, negatives: bool = True) -> None:
    train, test = split_crops(DATA / "mitotic-figures", work)
    name = "mitosis-crops" if negatives else "mitosis-crops-no-negatives"
    model = work / f"{name}.safetensors"
    started = time.perf_counter()
    run(
        [
            *CLI,
            "train-detector",
            str(train),
            "--recipe",
            str(ROOT / "recipes" / "mitosis-crops.yaml"),
            "--out",
            str(model),
            "--device",
            "cpu",
            "--overwrite",
            *(["--negatives", NEGATIVES_TRAIN] if negatives else []),
        ]
    )
    trained = time.perf_counter() - started
    printed = run(
        [
            *CLI,
            "evaluate-detector",
            str(test),
            "--centred-crops",
            "--model",
            str(model),
            "--out",
            str(work / f"{name}-eval"),
            "--device",
            "cpu",
            "--json",
            "--overwrite",
            "--negatives",
            NEGATIVES_TEST,
        ]
    )
    took = time.perf_counter() - started
    result = json.loads(printed.strip().splitlines()[-1])
    print(f"{name}: trained in {trained / 60:.1f} min, {took / 60:.1f} min in all; {result}")


def camelyon_patches(work: Path, slides: int = 6) -> None:
    """The recipe on synthetic 2048 × 3072 µm slides at 0.5 µm/px with tumour masks."""
    from PIL import Image

    from napari_mitosis.samples.synthetic import write_synthetic_slide

    folder, masks = work / "camelyon-slides", work / "camelyon-masks"
    masks.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(slides):
        path = folder / f"slide{seed}.tif"
        folder.mkdir(parents=True, exist_ok=True)
        truth = write_synthetic_slide(path, 4096, 6144, mpp=0.5, seed=seed, overwrite=True)
        Image.fromarray(truth.tumour_mask.astype(np.uint8) * 255).save(
            masks / f"slide{seed}_mask.png"
        )
        paths.append(str(path))
    model = work / "camelyon.safetensors"
    started = time.perf_counter()
    run(
        [
            *CLI,
            "train-classifier",
            *paths[:-1],
            "--annotations",
            str(masks),
            "--recipe",
            str(ROOT / "recipes" / "camelyon-patches.yaml"),
            "--out",
            str(model),
            "--device",
            "cpu",
            "--overwrite",
        ]
    )
    trained = time.perf_counter() - started
    printed = run(
        [
            *CLI,
            "evaluate-classifier",
            paths[-1],
            "--annotations",
            str(masks),
            "--model",
            str(model),
            "--out",
            str(work / "camelyon-eval"),
            "--device",
            "cpu",
            "--json",
            "--overwrite",
        ]
    )
    result = json.loads(printed.strip().splitlines()[-1])
    print(f"camelyon-patches: {slides - 1} training slides in {trained / 60:.1f} min; {result}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", nargs="+", default=["atypical-mitosis", "ultrasound", "mitosis-crops"]
    )
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="real-data-"))
    work.mkdir(parents=True, exist_ok=True)
    if "atypical-mitosis" in args.only:
        classifier("atypical-mitosis", DATA / "mitotic-figures", work)
        subtype_fields(work / "atypical-mitosis.safetensors", work)
    if "ultrasound" in args.only:
        classifier("ultrasound", DATA / "ultrasound", work)
    if "mitosis-crops" in args.only:
        detector(work)
    if "mitosis-crops-no-negatives" in args.only:
        detector(work, negatives=False)
    if "camelyon-patches" in args.only:
        camelyon_patches(work)


if __name__ == "__main__":
    main()
