"""The code location: `dagster dev -w workspace.yaml` or `-m cidadao_backup_dagster.definitions`."""

from __future__ import annotations

import dagster as dg

from .defs import postgres
from .defs.resources import build_resources


def build_defs() -> dg.Definitions:
    """Definitions with resources read from the environment as it is now (tests and the quick start
    call this after setting variables; the code location uses `defs` below)."""
    return dg.Definitions.merge(postgres.defs, dg.Definitions(resources=build_resources()))


defs = build_defs()
