"""docs/configuration.md is generated from the traits: it must match the code."""

from __future__ import annotations

import runpy

from .conftest import REPO


def test_configuration_reference_is_up_to_date() -> None:
    module = runpy.run_path(str(REPO / "scripts" / "config_docs.py"))
    expected = module["render"]()
    assert (REPO / "docs" / "configuration.md").read_text() == expected, (
        "docs/configuration.md is stale: run `.venv/bin/python scripts/config_docs.py`"
    )
