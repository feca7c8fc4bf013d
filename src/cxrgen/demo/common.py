"""Shared pieces of the demo-corpus writers: deterministic RNG streams, fake PHI with a canary registry,
and access to the real metadata files shipped inside the installed torchxrayvision package."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrgen.demo.noise import NoiseLog

_GIVEN = ("Margarethe", "Ottilie", "Bartholomew", "Leopoldine", "Evangelos", "Theodora", "Casimir", "Henrietta",
          "Wendelin", "Philippa", "Anselm", "Rosalind", "Ignatius", "Clementine", "Zebulon", "Ermengarde")
_FAMILY = ("Quackenbush", "Featherstonehaugh", "Vandersloot", "Brightwater", "Oglethorpe", "Pennywhistle",
           "Abernathy", "Thistlewood", "Marchbanks", "Crumpacker", "Lindqvist-Oyelaran", "Haverbrook",
           "Montgomery-Szabo", "Wickersham", "Dunleavy", "Kowalczyk-Reyes")
_INSTITUTIONS = ("St. Aldhelm Memorial Hospital", "Riverbend University Medical Center", "Mercy Vale Clinic",
                 "Northgate General Infirmary", "Hospital San Cipriano de la Vega")


def txrv_data_dir() -> Path:
    """``torchxrayvision/data`` of the installed package, found without importing torch (8 s import)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("torchxrayvision is not installed; the demo corpus reads its shipped metadata files")
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not path.is_dir():
        raise RuntimeError(f"torchxrayvision data folder not found at {path}")
    return path


@dataclass
class PhiRegistry:
    """Makes realistic but fake PHI for DICOM headers and remembers every string, so tests can prove that none of
    them reaches ``results/`` outside the raw demo sources."""

    canaries: set[str] = field(default_factory=set)

    def fake_person(self, rng: np.random.Generator) -> dict[str, str]:
        given = _GIVEN[rng.integers(len(_GIVEN))]
        family = _FAMILY[rng.integers(len(_FAMILY))]
        year, month, day = int(rng.integers(1930, 2005)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        mrn = f"MRN{rng.integers(10**7, 10**8)}"
        person = {
            "PatientName": f"{family}^{given}",
            "PatientBirthDate": f"{year:04d}{month:02d}{day:02d}",
            "OtherPatientIDs": mrn,
            "InstitutionName": _INSTITUTIONS[rng.integers(len(_INSTITUTIONS))],
            "ReferringPhysicianName": f"{_FAMILY[rng.integers(len(_FAMILY))]}^{_GIVEN[rng.integers(len(_GIVEN))]}",
            "InstitutionAddress": f"{rng.integers(1, 999)} {family} Lane, Springfield",
            "ImageComments": f"Pt {given} {family} DOB {year:04d}-{month:02d}-{day:02d} {mrn} portable",
        }
        # the distinctive strings a leak would contain
        self.canaries.update({person["PatientName"], f"{given} {family}", person["PatientBirthDate"], mrn,
                              person["InstitutionName"], person["InstitutionAddress"]})
        return person

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(sorted(self.canaries), indent=1))


@dataclass
class DemoContext:
    seed: int
    downscale: float  # demo films are `downscale` times smaller in pixels, with `downscale` times larger spacing
    bad_fraction: float = 0.03  # share of deliberately bad files (truncated, non-chest, no pixels, orphan, …)
    phi: PhiRegistry = field(default_factory=PhiRegistry)
    noise_fraction: float = 0.0  # share of sound files turned into ingestible noisy films (cxrgen.demo.noise)
    noise: NoiseLog = field(default_factory=NoiseLog)  # the noisy files written (ground truth for LNFS)

    def rng(self, *key: object) -> np.random.Generator:
        """A deterministic, independent stream per key (e.g. ``ctx.rng("mimic", "rows")``)."""
        digest = hashlib.sha256(repr((self.seed, *key)).encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))
