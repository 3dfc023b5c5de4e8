"""Docs match the code: every setting is documented, every documented setting exists."""

import re
from pathlib import Path

from services.kit import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented():
    text = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", text, re.M))
    fields = {name.upper() for name in Settings.model_fields if name != "service_name"}
    assert fields - documented == set(), "settings missing from docs/configuration.md"
    extra = documented - fields - {"OTEL_BSP_SCHEDULE_DELAY"}
    assert extra == set(), "docs/configuration.md documents settings that do not exist"
