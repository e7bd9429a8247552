"""The README documents every setting and keeps the quickstart the CI runs."""

import re
from pathlib import Path

from service.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented():
    missing = [f"L2O_{name.upper()}" for name in Settings.model_fields if f"L2O_{name.upper()}" not in README]
    assert not missing, f"settings missing from the README: {missing}"


def test_quickstart_has_the_two_commands_demo_first():
    block = re.search(r"## Quickstart\s+(?:<!--[^\n]*-->\s+)?```bash\n(.*?)```", README, re.S)
    assert block, "no ```bash block directly under ## Quickstart"
    assert block.group(1).strip().splitlines() == ["scripts/dev demo", "scripts/dev test"]


def test_every_l2o_variable_read_in_service_is_a_setting():
    """service/ reads L2O_* variables only through Settings; the SDK's own (L2O_URL, L2O_API_KEY), which
    the CLI's client commands pass on, are the exception."""
    root = Path(__file__).resolve().parent.parent
    sdk = set(re.findall(r"L2O_[A-Z0-9_]+", (root / "client" / "_constants.py").read_text()))
    read = {name for path in (root / "service").rglob("*.py")
            for name in re.findall(r"(?:environ(?:\.get)?\(?\[?|getenv\()\s*[\"'](L2O_[A-Z0-9_]+)", path.read_text())}
    fields = {f"L2O_{name.upper()}" for name in Settings.model_fields}
    assert read - fields - sdk == set()
