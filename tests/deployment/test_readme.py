"""The README's settings table is the one the code has."""

from pathlib import Path

from bushub.settings import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_setting_as_the_code_defines_it() -> None:
    text = README.read_text()
    for flag, variable, default, meaning in settings_table():
        row = f"| `{flag}` | `{variable}` | {default} | {meaning} |"
        assert row in text, f"README settings table is stale at {flag}"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text().split("\n## ")[0]
    assert "make run" in head and "make test" in head
