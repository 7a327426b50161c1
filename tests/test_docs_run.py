"""Every code block of README.md and docs/*.md runs as written (Sybil; `docs_examples`).

Each page runs in its own folder holding what its blocks name: ``slide.svs`` (a synthetic
slide with known mitoses), the suite's small trained models under the docs' file names
(``tumour.safetensors``, ``mitosis.safetensors``, ``unet.safetensors``…), a WSInfer folder,
class folders, annotated slides and fields in the ICPR layouts. Commands run with their
defaults (``--device auto`` included), each in its own process forked from one that has
imported torch (`docs_cli_server`), with the model registry in a folder of the test's own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CMU_SMALL
from docs_examples import PAGES, block_census, run_page
from test_midog_coco import MIDOG_PP, _midog_style

#: Blocks marked to skip are long trainings on real data, windows that wait, installs and
#: the network; the share that runs (as written, or a training shortened) may only grow.
MIN_RUN_SHARE = 0.80


def _write_fields(folder: Path, pairs, *, layout: str) -> None:
    """Synthetic high-power fields as ICPR 2012 (bmp + pixel CSV), ICPR 2014 (png +
    centroid CSV) or box files (png + .boxes.csv)."""
    from PIL import Image
    from skimage.measure import label, regionprops

    from napari_mitosis.io.detections import mask_to_boxes, write_detections_csv

    folder.mkdir(parents=True)
    for i, (rgb, truth) in enumerate(pairs):
        stem = f"A0{i}_00"
        if layout == "icpr2012":
            Image.fromarray(rgb).save(folder / f"{stem}.bmp")
            lines = []
            for region in regionprops(label(truth.mitosis_mask)):
                ys, xs = region.coords[:, 0], region.coords[:, 1]
                lines.append(",".join(f"{x},{y}" for y, x in zip(ys, xs, strict=True)))
            (folder / f"{stem}.csv").write_text("\n".join(lines) + "\n")
        elif layout == "icpr2014":
            Image.fromarray(rgb).save(folder / f"{stem}.png")
            rows = [f"{int(x)},{int(y)},1" for y, x in truth.mitoses]
            (folder / f"{stem}.csv").write_text("\n".join(rows) + "\n")
        else:
            Image.fromarray(rgb).save(folder / f"{stem}.png")
            write_detections_csv(folder / f"{stem}.boxes.csv", mask_to_boxes(truth.mitosis_mask))


def _tissue_regions(path: Path, height: int, width: int) -> None:
    """Three classified rectangles (QuPath GeoJSON) over a slide's thirds."""
    features = []
    third = width // 3
    for k, name in enumerate(("Tumour", "Stroma", "Fat")):
        x0, x1 = k * third, (k + 1) * third
        ring = [[x0, 0], [x1, 0], [x1, height], [x0, height], [x0, 0]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": name}},
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


@pytest.fixture(scope="session")
def docs_workspace(
    tmp_path_factory,
    sample,
    tumour_slides,
    field_pairs,
    trained_classifier,
    trained_detector,
    trained_unet,
):
    """One folder with every input the docs name; each page runs in a copy of it."""
    from PIL import Image

    from conftest import bright_squares, crop_classifier
    from napari_mitosis import Annotation, write_geojson
    from test_published_models import wsinfer_folder

    root = tmp_path_factory.mktemp("docs-workspace")
    shutil.copy(sample.path, root / "slide.svs")
    if CMU_SMALL.exists():  # real tissue without figures, for --negatives
        shutil.copy(CMU_SMALL, root / CMU_SMALL.name)
    if MIDOG_PP.exists():  # the real MIDOG++ database (labels only)
        shutil.copy(MIDOG_PP, root / MIDOG_PP.name)
    # MIDOG's layout with synthetic images of known truth: midog/001.tiff… + MIDOG++.json
    database = _midog_style(
        root / "midog", field_pairs[:2], tumour_types=["human breast cancer"] * 2
    )
    database.rename(database.with_name("MIDOG++.json"))
    shutil.copy(trained_classifier[0], root / "tumour.safetensors")
    shutil.copy(trained_classifier[0], root / "idc.safetensors")
    for name in ("mitosis.safetensors", "detector.safetensors"):
        shutil.copy(trained_detector[0], root / name)
    shutil.copy(trained_unet[0], root / "unet.safetensors")
    crop_classifier(root / "atypical.safetensors")  # atypical vs normal, 0.25 µm/px crops
    wsinfer_folder(root / "breast-tumor-resnet34.tcga-brca", ("notumor", "tumor"))
    # class folders: 16 px images, a bright square (tumour) or none (normal)
    images, labels = bright_squares(40)
    for k, name in enumerate(("normal", "tumour")):
        (root / "patches" / name).mkdir(parents=True)
        for i in np.flatnonzero(labels == k):
            Image.fromarray(images[i]).resize((64, 64)).save(root / "patches" / name / f"{i}.png")
    Image.fromarray(np.asarray(Image.open(sample.path))[:96, :96]).save(root / "patch.png")
    # annotated slides at 1 µm/px with tumour masks, as three cases and a test folder
    (root / "ann").mkdir()
    (root / "test").mkdir()
    for (path, _truth), stem in zip(tumour_slides, "abc", strict=True):
        shutil.copy(path, root / f"{stem}.svs")
        shutil.copy(path.with_name(f"{path.stem}_mask.png"), root / "ann" / f"{stem}_mask.png")
    shutil.copy(tumour_slides[2][0], root / "test" / "c.svs")
    _tissue_regions(root / "a.geojson", 1024, 1536)
    _tissue_regions(root / "case.regions.geojson", 4096, 6144)  # `napari-mitosis sample`'s size
    # a cohort: slides in a folder, a slide list and a CSV
    (root / "slides").mkdir()
    (root / "cohort" / "nested").mkdir(parents=True)
    for name in ("case-01", "case-02"):
        shutil.copy(sample.path, root / "slides" / f"{name}.svs")
    shutil.copy(sample.path, root / "cohort" / "case-01.svs")
    (root / "cohort.csv").write_text("slide\nslides/case-01.svs\nslides/case-02.svs\n")
    (root / "slides.txt").write_text("slides/case-01.svs\n")
    # fields in the ICPR layouts and as box files
    _write_fields(root / "mitos", field_pairs[:2], layout="icpr2012")
    _write_fields(root / "atypia", field_pairs[2:4], layout="icpr2014")
    _write_fields(root / "fields", field_pairs[:2], layout="boxes")
    _write_fields(root / "test-fields", field_pairs[4:6], layout="boxes")
    # a reviewed GeoJSON: the sample's true mitoses, accepted
    write_geojson(
        root / "reviewed.geojson",
        [Annotation(tuple(yx), "point", "Mitosis") for yx in sample.mitoses],
    )
    return root


@pytest.fixture(scope="session")
def cli_client():
    """A folder holding the ``napari-mitosis`` client of a fork server that has imported
    torch once (`docs_cli_server`): each command of the docs still runs in its own
    process, as written, without paying the imports again."""
    import tempfile
    import time

    from docs_cli_server import write_client

    folder = Path(tempfile.mkdtemp(prefix="nm-docs-", dir="/tmp"))  # a short socket path
    socket_path = str(folder / "cli.sock")
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("docs_cli_server.py")), socket_path],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not Path(socket_path + ".ready").exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the docs' fork server did not start ({server.returncode})")
        time.sleep(0.1)
    yield write_client(folder / "bin", socket_path).parent
    server.terminate()
    server.wait(timeout=30)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_block_of_the_page_runs_as_written(
    page: Path, docs_workspace: Path, cli_client: Path, tmp_path: Path, monkeypatch
) -> None:
    import napari

    work = tmp_path / "work"
    shutil.copytree(docs_workspace, work)
    env = dict(os.environ)
    path = [str(cli_client), str(Path(sys.executable).parent), env["PATH"]]
    env["PATH"] = os.pathsep.join(path)
    env["NAPARI_MITOSIS_MODELS"] = str(tmp_path / "registry")
    monkeypatch.setenv("NAPARI_MITOSIS_MODELS", env["NAPARI_MITOSIS_MODELS"])
    monkeypatch.chdir(work)
    # a script's napari.run() waits for the window to close; here the page goes on
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    processes: list = []
    namespace = {
        "__name__": "__main__",
        "_cwd": str(work),
        "_env": env,
        "_processes": processes,
        "_outputs": [],
    }
    try:
        ran, skipped = run_page(page, namespace)
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        napari.Viewer.close_all()
        _close_dask_clients()
    print(f"{page.name}: {ran} blocks ran, {len(skipped)} skipped {skipped}")


def _close_dask_clients() -> None:
    """A page's `Client()` becomes Dask's default scheduler for the whole process: close
    it, so later tests compute in this process again."""
    from distributed import default_client

    while True:
        try:
            client = default_client()
        except ValueError:
            return
        client.close()


def test_most_blocks_run_and_each_skipped_one_says_why() -> None:
    census = block_census()
    blocks = sum(b for b, _, _ in census.values())
    skipped = sum(s for _, s, _ in census.values())
    shortened = sum(t for _, _, t in census.values())
    assert blocks >= 30, census
    assert (blocks - skipped) / blocks >= MIN_RUN_SHARE, census
    assert shortened <= skipped, census  # shortening is the exception, not the rule


def test_a_shortened_training_keeps_the_command_and_adds_the_options() -> None:
    from docs_examples import shortened

    code = (
        "napari-mitosis sample case.tif\n"
        "napari-mitosis train-detector case.tif --annotations a.geojson \\\n"
        "    --out d.safetensors --steps 300   # a comment\n"
    )
    assert shortened(code, "--steps 4").splitlines() == [
        "napari-mitosis sample case.tif",
        "napari-mitosis train-detector case.tif --annotations a.geojson "
        "--out d.safetensors --steps 300 --steps 4   # a comment",
    ]
    with pytest.raises(ValueError, match="no napari-mitosis train"):
        shortened("napari-mitosis info slide.svs\n", "--steps 4")
