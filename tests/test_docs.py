"""Given the README and the docs, what they tell a user to run works as written."""

from __future__ import annotations

import re
from pathlib import Path

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
