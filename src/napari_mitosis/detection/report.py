"""A reviewed slide's mitotic count as one self-contained HTML report (images embedded)
and a JSON summary: counts per decision, per mm² of tissue, the 10-HPF hotspot, the
mitotic score, the detector's card, reviewer and date."""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from napari_mitosis.detection.grading import DEFAULT_FIELD_DIAMETER_MM, grade
from napari_mitosis.detection.review import COLOURS, COUNTED, QUPATH_CLASSES, Review
from napari_mitosis.engine.tissue import TissueMask
from napari_mitosis.io.output_file import atomic_output
from napari_mitosis.io.slide import Slide

#: Side of each gallery crop in µm (a figure and its neighbours).
CROP_UM = 24.0
THUMBNAIL_PX = 1024
GALLERY_MAX = 200


def summary(
    review: Review,
    tissue: TissueMask,
    mpp0: tuple[float, float],
    *,
    count_unreviewed: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """The numbers of a report, as `--json` prints them.

    The grade counts reviewed mitoses only, unless ``count_unreviewed``: then candidates
    nobody has judged count as mitoses too, and ``basis`` says the grade is a machine
    estimate, so a machine count is never passed off as a pathologist's.
    """
    counts = review.counts()
    counted = np.isin(review.decisions.astype(str), COUNTED)
    if count_unreviewed:
        counted |= review.decisions.astype(str) == ""
    graded = grade(review.centres[counted], tissue, mpp0, **options)
    made = ~review.added  # the model's own candidates, whatever was decided on them
    machine = grade(review.centres[made], tissue, mpp0, **options)
    atypical = review.decisions.astype(str) == "atypical"
    reviewed_atypical = grade(review.centres[atypical], tissue, mpp0, **options)
    called = review.called_atypical() & made
    machine_atypical = grade(review.centres[called], tissue, mpp0, **options)
    partly = counts["unreviewed"] > 0
    return {
        # "reviewed": the grade counts reviewed mitoses only; "machine estimate": it also
        # counts the unreviewed candidates (--count-unreviewed) and is no diagnosis.
        "basis": "machine estimate" if count_unreviewed and partly else "reviewed",
        "counted": int(counted.sum()),
        "reviewed": len(review) - counts["unreviewed"],
        "mitoses": counts["mitoses"],
        "accepted": counts["accepted"],
        "atypical": counts["atypical"],
        "rejected": counts["rejected"],
        "unsure": counts["unsure"],
        "unreviewed": counts["unreviewed"],
        "added": int(review.added.sum()),
        "area_mm2": graded["area_mm2"],
        "per_mm2": graded["per_mm2"],
        "hotspot": {
            "count": graded["hotspot_count"],
            "per_10_hpf": graded["hotspot_per_10_hpf"],
            "centre_y": graded["hotspot_centre_y"],
            "centre_x": graded["hotspot_centre_x"],
            "side_um": graded["hotspot_side_um"],
        },
        "field_diameter_mm": graded["field_diameter_mm"],
        "mitotic_score": graded["mitotic_score"],
        # Atypical figures among the counted ones; per 10 HPF in their own densest area.
        "atypical_fraction": _share(counts["atypical"], counts["mitoses"]),
        "atypical_per_mm2": reviewed_atypical["per_mm2"],
        "atypical_hotspot_per_10_hpf": reviewed_atypical["hotspot_per_10_hpf"],
        "reviewers": sorted({str(r) for r in review.reviewers if r}),
        # What the model alone would give: its candidates all taken as mitoses. A machine
        # count, never a pathologist's; the numbers above count reviewed decisions only.
        "machine": {
            "candidates": int(made.sum()),
            "per_mm2": machine["per_mm2"],
            "hotspot_per_10_hpf": machine["hotspot_per_10_hpf"],
            "mitotic_score": machine["mitotic_score"],
            # The subtyping classifier's calls among them (p_atypical ≥ its threshold).
            "subtyped": review.atypical_threshold is not None,
            "atypical": int(called.sum()),
            "atypical_fraction": _share(int(called.sum()), int(made.sum())),
            "atypical_per_mm2": machine_atypical["per_mm2"],
            "atypical_hotspot_per_10_hpf": machine_atypical["hotspot_per_10_hpf"],
        },
    }


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _atypical(numbers: dict[str, Any], count: int | None = None) -> str:
    """ "N (F % of the mitoses), X per 10 HPF in their densest area"."""
    count = numbers["atypical"] if count is None else count
    fraction = numbers["atypical_fraction"]
    text = str(count) + ("" if fraction is None else f" ({fraction:.0%})")
    spot = numbers["atypical_hotspot_per_10_hpf"]
    return text if not count or spot is None else f"{text}, {spot:.1f} per 10 HPF at their densest"


def basis_line(numbers: dict[str, Any]) -> str:
    """What the grade counts, said first when anything is unreviewed: "machine count: N
    candidates, R reviewed; …"."""
    if not numbers["unreviewed"]:
        return ""
    head = (
        f"machine count: {numbers['reviewed'] + numbers['unreviewed']} candidates, "
        f"{numbers['reviewed']} reviewed; "
    )
    if numbers["basis"] == "machine estimate":
        return head + (
            f"the {numbers['unreviewed']} unreviewed candidates are counted as mitoses "
            "(--count-unreviewed): the grade is a machine estimate, not a pathologist's count"
        )
    return head + (
        f"the grade counts reviewed mitoses only ({numbers['unreviewed']} not reviewed; "
        "--count-unreviewed counts them as a machine estimate)"
    )


def _basis(numbers: dict[str, Any]) -> str:
    line = basis_line(numbers)
    style = "background:#fff3c4;padding:.6em;border-left:6px solid #e0a800"
    return f'<p class="basis" style="{style}"><b>{html.escape(line)}</b></p>' if line else ""


def _per_10(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} per 10 HPF in the densest area"


def _png(image: np.ndarray | Image.Image) -> str:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _thumbnail(slide: Slide, review: Review, numbers: dict[str, Any]) -> Image.Image:
    """The coarsest level that fits, with every counted figure and the hotspot drawn."""
    level = len(slide.sources) - 1
    for index, source in enumerate(slide.sources):
        if max(source.shape[:2]) <= THUMBNAIL_PX * 2:
            level = index
            break
    height, width = slide.sources[level].shape[:2]
    image = Image.fromarray(np.asarray(slide.read_region(level, 0, 0, height, width))[..., :3])
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    scale = image.width / slide.levels[0].shape[1]
    draw = ImageDraw.Draw(image)
    for decision in COUNTED:
        colour = tuple(int(c * 255) for c in COLOURS[decision][:3])
        for y, x in review.centres[review.decisions == decision]:
            r = 3
            draw.ellipse(
                [x * scale - r, y * scale - r, x * scale + r, y * scale + r], outline=colour
            )
    spot = numbers["hotspot"]
    if spot["centre_y"] is not None and slide.mpp is not None:
        half_y = spot["side_um"] / slide.mpp[0] / 2 * scale
        half_x = spot["side_um"] / slide.mpp[1] / 2 * scale
        cy, cx = spot["centre_y"] * scale, spot["centre_x"] * scale
        draw.rectangle(
            [cx - half_x, cy - half_y, cx + half_x, cy + half_y], outline=(0, 90, 255), width=3
        )
    return image


def _crop(slide: Slide, centre: np.ndarray) -> np.ndarray:
    mpp = slide.mpp or (0.25, 0.25)
    size = max(8, round(CROP_UM / mpp[1]))
    y0, x0 = round(centre[0] - size / 2), round(centre[1] - size / 2)
    height, width = slide.levels[0].shape[:2]
    y0 = min(max(y0, 0), max(height - size, 0))
    x0 = min(max(x0, 0), max(width - size, 0))
    crop = np.asarray(slide.read_region(0, y0, x0, min(size, height), min(size, width)))[..., :3]
    return np.asarray(Image.fromarray(crop).resize((96, 96), Image.Resampling.LANCZOS))


def write_report(
    path: str | Path,
    slide: Slide,
    review: Review,
    tissue: TissueMask,
    *,
    field_diameter_mm: float = DEFAULT_FIELD_DIAMETER_MM,
    model_card: Any = None,
    detections_path: str | Path | None = None,
    count_unreviewed: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the HTML report atomically; returns its `summary` numbers."""
    if slide.mpp is None:
        raise ValueError(f"{slide.path}: a report needs the slide's µm/pixel (give --mpp)")
    numbers = summary(
        review,
        tissue,
        slide.mpp,
        count_unreviewed=count_unreviewed,
        diameter_mm=field_diameter_mm,
    )
    estimate = numbers["basis"] == "machine estimate"
    rows = [
        ("Mitoses (accepted + atypical)", numbers["mitoses"]),
        ("of which atypical", _atypical(numbers)),
        ("Rejected (non-mitotic figures)", numbers["rejected"]),
        ("Unsure", numbers["unsure"]),
        ("Not reviewed", numbers["unreviewed"]),
        ("Added by the reviewer", numbers["added"]),
        ("Tissue analysed", f"{numbers['area_mm2']:.2f} mm²"),
        ("Mitoses per mm²", "—" if numbers["per_mm2"] is None else f"{numbers['per_mm2']:.2f}"),
        (
            f"Hotspot: densest 10 HPF (field {field_diameter_mm:g} mm)",
            f"{numbers['hotspot']['count']} mitoses, "
            + (
                "—"
                if numbers["hotspot"]["per_10_hpf"] is None
                else f"{numbers['hotspot']['per_10_hpf']:.1f} per 10 HPF of tissue"
            ),
        ),
        (
            "Mitotic score (Nottingham grade)",
            f"{numbers['mitotic_score']}"
            + (" — a machine estimate: unreviewed candidates counted" if estimate else ""),
        ),
        ("Reviewer(s)", ", ".join(numbers["reviewers"]) or "— (nobody reviewed these candidates)"),
        (
            "Machine count (the model's candidates, unreviewed)",
            f"{numbers['machine']['candidates']} candidates, "
            + _per_10(numbers["machine"]["hotspot_per_10_hpf"])
            + f" → score {numbers['machine']['mitotic_score']} (not a diagnosis)",
        ),
        *(
            [
                (
                    "Machine atypical calls (p_atypical ≥ the classifier's threshold)",
                    _atypical(numbers["machine"], numbers["machine"]["atypical"]),
                )
            ]
            if numbers["machine"]["subtyped"]
            else []
        ),
        ("Date", datetime.date.today().isoformat()),
    ]
    table = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
    )
    gallery = []
    for decision in COUNTED:
        order = np.argsort(-np.nan_to_num(review.scores, nan=1.0))
        chosen = [i for i in order if review.decisions[i] == decision][:GALLERY_MAX]
        if not chosen:
            continue
        images = "".join(
            f'<figure><img src="{_png(_crop(slide, review.centres[i]))}" alt="{decision} {i}">'
            f"<figcaption>#{i}"
            + ("" if np.isnan(review.scores[i]) else f" · {review.scores[i]:.2f}")
            + "</figcaption></figure>"
            for i in chosen
        )
        gallery.append(f"<h2>{html.escape(QUPATH_CLASSES[decision])} ({len(chosen)})</h2>{images}")
    called = np.flatnonzero(review.called_atypical() & (review.decisions.astype(str) != "atypical"))
    if len(called):  # the classifier's atypical calls the reviewer has not confirmed
        chosen = called[np.argsort(-review.p_atypical[called])][:GALLERY_MAX]
        images = "".join(
            f'<figure><img src="{_png(_crop(slide, review.centres[i]))}" alt="atypical call {i}">'
            f"<figcaption>#{i} · p {review.p_atypical[i]:.2f}</figcaption></figure>"
            for i in chosen
        )
        gallery.append(
            f"<h2>Called atypical by the classifier, not confirmed by review ({len(chosen)})"
            f"</h2>{images}"
        )
    card = (
        "<pre>" + html.escape(json.dumps(asdict(model_card), indent=1, default=str)) + "</pre>"
        if model_card is not None
        else "<p>No detector model card was given (--model).</p>"
    )
    source = html.escape(str(detections_path)) if detections_path else "the review in napari"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Mitotic count: {html.escape(Path(slide.path).name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}th{{text-align:left;padding-right:2em}}
figure{{display:inline-block;margin:4px;text-align:center;font-size:11px}}img{{border:1px solid #999}}</style></head>
<body><h1>Mitotic count — {html.escape(Path(slide.path).name)}</h1>
<p>Slide {html.escape(str(slide.path))}; candidates and decisions from {source}.</p>
{_basis(numbers)}
<table>{table}</table>
<h2>Slide, counted figures and the hotspot (blue square)</h2>
<img src="{_png(_thumbnail(slide, review, numbers))}" alt="slide thumbnail">
{"".join(gallery)}
<h2>Detector</h2>{card}
<p>Crops are {CROP_UM:g} µm wide. Mitotic score from the table by field diameter
(CAP / RCPath, after Elston &amp; Ellis 1991).</p>
</body></html>
"""
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(page)
    return numbers
