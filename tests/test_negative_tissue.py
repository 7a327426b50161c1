"""Real tissue without mitotic figures: read at the detector's µm/px, sampled nucleus by
nucleus and mined in training, held out in validation, and scored as false candidates
per mm² and per HPF by ``evaluate-detector --negatives``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_mitosis.cli import main
from napari_mitosis.detection.centred_crops import other_nuclei, padded_field
from napari_mitosis.detection.negative_tissue import (
    NegativeField,
    NegativeRegion,
    coloured_tissue,
    nucleus_centres,
    read_negative_field,
)
from napari_mitosis.detection.run import HPF_MM2, detect_slide
from napari_mitosis.detection.training import BoxCropSampler, DetectorTraining
from napari_mitosis.models.checkpoint import read_card
from napari_mitosis.samples.synthetic import synthetic_fields

#: A piece of CMU-1's upper half (level-0 rows 600–1100), dermis and epidermis, no figure.
PIECE = "@600,700,1100,1500"


def _disks(centres: list[tuple[int, int]], radius: int, size: int = 200) -> np.ndarray:
    """Pale pink tissue with dark purple disks (nuclei) at ``centres``."""
    yy, xx = np.mgrid[:size, :size]
    image = np.empty((size, size, 3), np.uint8)
    image[:] = (235, 190, 215)
    for y, x in centres:
        image[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = (70, 40, 120)
    return image


def test_nuclei_are_the_dark_blobs_and_a_crops_own_figure_is_not_one_of_them() -> None:
    centres = [(30, 40), (100, 100), (150, 60), (60, 160)]
    found = nucleus_centres(_disks(centres, radius=12), mpp=0.25)  # 6 µm nuclei
    assert len(found) == 4
    for y, x in centres:
        assert np.hypot(*(found - [y, x]).T).min() < 1.5
    assert len(nucleus_centres(_disks(centres, radius=3), mpp=0.25)) == 0  # 2.5 µm²: debris
    # The figure at a centred crop's middle is not a negative; its neighbours are.
    others = other_nuclei(_disks([(100, 100), (30, 40)], radius=12), mpp=0.25)
    np.testing.assert_allclose(others, [[30, 40]], atol=1.5)


def test_a_region_is_named_slide_at_rectangle_and_bad_ones_say_what_is_wrong(
    cmu_small: Path,
) -> None:
    region = NegativeRegion.parse(f"{cmu_small}{PIECE}")
    assert region.path == cmu_small and region.region == (600, 700, 1100, 1500)
    assert str(region) == f"{cmu_small}{PIECE}"
    assert NegativeRegion.parse(str(cmu_small)).region is None
    with pytest.raises(ValueError, match="y0,x0,y1,x1"):
        NegativeRegion.parse(f"{cmu_small}@600,700,500,1500")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.svs"):
        NegativeRegion.parse("nowhere.svs@0,0,10,10")


def test_negative_tissue_is_read_at_the_models_scale_and_split_without_sharing_a_pixel(
    cmu_small: Path,
) -> None:
    tissue = read_negative_field(NegativeRegion.parse(f"{cmu_small}{PIECE}"), mpp=0.25)
    # 0.499 µm/px upsampled to 0.25: twice the level-0 pixels each way.
    assert abs(tissue.image.shape[0] - 1000) <= 2 and abs(tissue.image.shape[1] - 1600) <= 2
    assert tissue.mpp == pytest.approx(0.25, rel=0.01)
    assert len(tissue.nuclei) > 40 and 0.01 < tissue.tissue_mm2 < 0.1
    left, right = tissue.split_columns(0.25)
    assert left.tissue_mm2 + right.tissue_mm2 == pytest.approx(tissue.tissue_mm2, rel=0.02)
    assert left.image.shape[1] + right.image.shape[1] == tissue.image.shape[1]
    assert len(left.nuclei) + len(right.nuclei) == len(tissue.nuclei)
    assert 0.15 < len(right.nuclei) / len(tissue.nuclei) < 0.35
    assert (right.nuclei[:, 1] < right.image.shape[1]).all() and (right.nuclei >= 0).all()


def test_crops_from_negative_tissue_carry_no_box_and_sit_on_its_nuclei_or_mined_candidates() -> (
    None
):
    image = _disks([(100, 100)], radius=12, size=400)
    tissue = NegativeField("t", image, 0.25, coloured_tissue(image), np.array([[100.0, 100.0]]))
    tissue.mined = np.array([[300.0, 300.0]])
    config = DetectorTraining(crop=64, batch_size=1, negative_fraction=1.0, hed_jitter=0)
    figure = padded_field(np.full((64, 64, 3), 200, np.uint8), np.array([[8.0, 8, 56, 56]]))
    sampler = BoxCropSampler([figure], config, np.random.default_rng(0), negatives=[tissue])
    seen = set()
    for _ in range(40):
        _, _, centre = sampler._choose()
        seen.add(centre)
        _, target = sampler._crop()
        assert len(target["boxes"]) == 0
    assert seen == {(100.0, 100.0), (300.0, 300.0)}  # nuclei and mined, half each


def _crop_folder(root: Path) -> Path:
    rows = ["file,slide"]
    i = 0
    for rgb, truth in synthetic_fields(2, first_seed=80):
        for y, x in truth.mitoses.astype(int):
            if 64 <= y <= rgb.shape[0] - 64 and 64 <= x <= rgb.shape[1] - 64:
                label = ("normal", "atypical")[i % 2]  # classes are all figures here
                (root / label).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rgb[y - 64 : y + 64, x - 64 : x + 64]).save(
                    root / label / f"c{i}.png"
                )
                rows.append(f"{label}/c{i}.png,slide{i % 3}")
                i += 1
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_training_with_negative_tissue_mines_it_and_validates_on_a_held_out_strip(
    cmu_small: Path, tmp_path: Path, capsys
) -> None:
    folder = _crop_folder(tmp_path / "crops")
    out = tmp_path / "d.safetensors"
    negatives = f"{cmu_small}@700,900,950,1250"  # a small piece: the mechanics, not the skill
    command = [
        "train-detector", str(folder), "--centred-crops", "--crop-negatives", "--crop", "128",
        "--steps", "2", "--eval-every", "2", "--batch-size", "2", "--negatives", negatives,
        "--mine-threshold", "0.0", "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "mm² held out for validation" in printed and "candidates mined" in printed
    with out.with_suffix(".csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert {"val_negative_per_mm2", "mined"} <= set(history[0])
    assert int(float(history[-1]["mined"])) > 0  # at threshold 0 every candidate is mined
    assert f"negative tissue: {negatives}" in read_card(out).notes


def test_evaluate_detector_counts_false_candidates_per_mm2_and_per_hpf_of_negative_tissue(
    trained_detector, cmu_small: Path, tmp_path: Path, capsys
) -> None:
    path, _ = trained_detector
    crops = _crop_folder(tmp_path / "crops")
    negatives = f"{cmu_small}{PIECE}"
    command = ["evaluate-detector", str(crops), "--centred-crops", "--model", str(path)]
    command += ["--out", str(tmp_path / "ev"), "--negatives", negatives, "--threshold", "0.05"]
    assert main([*command, "--json"]) == 0
    printed = capsys.readouterr().out
    scores = json.loads(printed.strip().splitlines()[-1])
    rates = scores["negatives"]
    assert "recall" in scores and rates["regions"][0]["region"] == negatives
    # The same run as `detect --region … --tissue-only`: every candidate there is false.
    result = detect_slide(
        cmu_small, path, region=(600, 700, 1100, 1500), tissue_only=True, score_threshold=0.05
    )
    assert rates["false_candidates"] == len(result.detections)
    assert rates["tissue_mm2"] == pytest.approx(result.area_mm2)
    assert rates["per_mm2"] == pytest.approx(len(result.detections) / result.area_mm2)
    assert rates["per_hpf"] == pytest.approx(rates["per_mm2"] * HPF_MM2)
    assert "per HPF" in printed
