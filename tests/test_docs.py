"""Given the README and the docs, what they tell a user to run works as written."""

from __future__ import annotations

import re
from pathlib import Path

from napari_mitosis.io.geojson import read_geojson

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def _python_block(text: str, heading: str) -> str:
    section = text.split(f"## {heading}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)


def test_the_readme_is_a_front_page_that_opens_with_the_two_commands() -> None:
    assert len(README.splitlines()) <= 200
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.DOTALL).group(1)
    assert [line.split()[:2] for line in first_block.splitlines()] == [
        ["make", "demo"],
        ["make", "test"],
    ]


def test_every_page_the_readme_links_to_exists() -> None:
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.(?:md|png))(?:#[\w-]+)?\)", README)
    assert links and all((ROOT / link).is_file() for link in links), links


def test_the_script_quick_start_runs_as_written(
    sample, trained_classifier, trained_detector, tmp_path: Path, monkeypatch, capsys
) -> None:
    code = _python_block(README, "Quick start in a script")
    monkeypatch.chdir(tmp_path)
    code = code.replace('"slide.svs"', repr(str(sample.path)))
    code = code.replace('"tumour.safetensors"', repr(str(trained_classifier[0])))
    code = code.replace('"mitosis.safetensors"', repr(str(trained_detector[0])))
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "mm² of tumour" in printed and " mitoses at level " in printed
    count = int(re.search(r"(\d+) mitoses at level", printed).group(1))
    marks = read_geojson(tmp_path / "mitoses.geojson")
    assert len(marks) == count and all(m.classification == "Mitosis" for m in marks)
