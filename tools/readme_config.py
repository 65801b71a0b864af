"""Rewrites the README's configuration table from server.config.SETTINGS.

`python tools/readme_config.py` after adding or changing a setting; the
tests fail while the README and the code disagree.
"""

from __future__ import annotations

from pathlib import Path

from server.config import SETTINGS

README = Path(__file__).resolve().parent.parent / "README.md"
HEADER = "| variable | type | default | meaning |"


def table() -> str:
    rows = [HEADER, "| --- | --- | --- | --- |"]
    for setting in SETTINGS:
        default = {None: "required", "": "empty"}.get(setting.default, f"`{setting.default}`")
        description = setting.description.replace("|", "\\|")  # a cell's own pipes
        rows.append(f"| `{setting.name}` | {setting.kind} | {default} | {description} |")
    return "\n".join(rows)


def main() -> None:
    text = README.read_text()
    start = text.index(HEADER)
    end = text.index("\n\n", start)
    README.write_text(text[:start] + table() + text[end:])


if __name__ == "__main__":
    main()
