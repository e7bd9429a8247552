"""The README documents every setting and keeps the quickstart the CI runs."""

import re
from pathlib import Path

from service.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [f"L2O_{name.upper()}" for name in Settings.model_fields if f"L2O_{name.upper()}" not in README]
    assert not missing, f"settings missing from the README: {missing}"


def test_quickstart_has_the_two_commands_demo_first():
    block = re.search(r"## Quickstart\s+```bash\n(.*?)```", README, re.S)
    assert block, "no ```bash block directly under ## Quickstart"
    assert block.group(1).strip().splitlines() == ["scripts/dev demo", "scripts/dev test"]
