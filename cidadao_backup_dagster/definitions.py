"""The code location: `dagster dev -w workspace.yaml` or `-m cidadao_backup_dagster.definitions`."""

from __future__ import annotations

import dagster as dg

from .defs import postgres
from .defs.resources import build_resources

defs = dg.Definitions.merge(postgres.defs, dg.Definitions(resources=build_resources()))
