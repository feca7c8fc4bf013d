"""Rule ``build_demo_mimic_iv``: the MIMIC-IV v2.2 tables (hosp/ and icu/ modules) of the demo's ICU patients, from
the same plan whose films the MIMIC-CXR demo corpus holds (:mod:`cxrgen.demo.icu`)."""

from __future__ import annotations

import time
from pathlib import Path

from cxrgen.demo.common import DemoContext
from cxrgen.demo.icu import plan_icu_stays
from cxrgen.demo.mimic_iv import VERSION, write_mimic_iv


def build_demo_mimic_iv(out_root: Path, *, icu_stays: int, seed: int) -> dict:
    """Write ``out_root/hosp/*.csv.gz`` and ``out_root/icu/*.csv.gz`` for ``icu_stays`` planned ICU patients; returns
    the row counts, the plan's in-hospital mortality and the seconds taken. The plan depends only on ``seed`` and
    ``icu_stays``, so it matches the MIMIC-CXR demo corpus written with the same values."""
    started = time.perf_counter()
    ctx = DemoContext(seed=seed, downscale=1.0)  # the plan does not depend on the film size
    plan = plan_icu_stays(ctx, icu_stays)
    counts = write_mimic_iv(Path(out_root), plan, ctx)
    died = [a.died for a in plan.admissions]
    return {"version": VERSION, "admissions": len(plan.admissions), "rows": counts,
            "mortality": round(sum(died) / max(len(died), 1), 4),
            "seconds": round(time.perf_counter() - started, 1)}
