"""Human-readable reports of pipeline stages (HTML for ``snakemake --report``, markdown twins for terminals)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def read_section_json(path: Path | str | None) -> dict | None:
    """A report input's json content; None when the file is not given or absent (its report section then says so)."""
    if path is None or not Path(path).is_file():
        if path is not None:
            log.warning("%s is absent; its report section says so", path)
        return None
    return json.loads(Path(path).read_text())
