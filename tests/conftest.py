"""Shared fixtures: synthetic radiographs, a DICOM file factory built on cxrgen's writer, and the real test DICOMs that
installed packages ship (pydicom-data's ``data_store``, pydicom's own test files)."""

from __future__ import annotations

import os

# Tiny models on 2 cores: one BLAS/OpenMP thread per test process avoids 10-25x slowdowns from oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cxrgen.demo.dicom_writer import write_dicom  # noqa: E402


def synthetic_radiograph(height: int = 96, width: int = 80, seed: int = 0) -> np.ndarray:
    """Float64 (height, width) image in [0, 1], display sense: dark air and lungs, bright mediastinum/spine, mild
    noise. Regions (fractions of the image): lungs at rows 0.3-0.7, cols 0.2-0.35 and 0.65-0.8; mediastinum at cols
    0.45-0.55."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    y, x = yy / (height - 1), xx / (width - 1)
    img = np.full((height, width), 0.05)
    img[((y - 0.5) / 0.46) ** 2 + ((x - 0.5) / 0.45) ** 2 < 1] = 0.55  # body
    for cx in (0.275, 0.725):
        img[((y - 0.5) / 0.3) ** 2 + ((x - cx) / 0.13) ** 2 < 1] = 0.22  # lungs
    img[(np.abs(x - 0.5) < 0.07) & (y > 0.1) & (y < 0.9)] = 0.85  # mediastinum + spine
    img += 0.05 * y  # smooth gradient so no two rows are equal
    img += 0.01 * rng.standard_normal((height, width))
    return np.clip(img, 0.0, 1.0)


@pytest.fixture(name="synthetic_radiograph")
def synthetic_radiograph_fixture() -> Callable[..., np.ndarray]:
    """The :func:`synthetic_radiograph` function, for tests that need fresh test images."""
    return synthetic_radiograph


@pytest.fixture
def make_dicom(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_dicom(name="image.dcm", pixels=None, **write_dicom_kwargs) -> Path`` in ``tmp_path``.

    ``pixels`` defaults to ``synthetic_radiograph()``; every keyword of
    :func:`cxrgen.demo.dicom_writer.write_dicom` is accepted (``uid_seed`` defaults to ``name``)."""

    def _make(name: str = "image.dcm", pixels: np.ndarray | None = None, **kwargs) -> Path:
        path = tmp_path / name
        kwargs.setdefault("uid_seed", name)
        write_dicom(path, synthetic_radiograph() if pixels is None else pixels, **kwargs)
        return path

    return _make


@pytest.fixture(scope="session")
def pydicom_data_dir() -> Path:
    """``site-packages/data_store/data`` of the pinned pydicom-data package (RG1 chest CR, RG3 extremity, CT 693)."""
    spec = importlib.util.find_spec("data_store")
    assert spec is not None and spec.submodule_search_locations, "pydicom-data (a pinned dependency) is not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    assert (path / "RG1_UNCR.dcm").is_file(), f"RG1_UNCR.dcm missing under {path}"
    return path


@pytest.fixture(scope="session")
def pydicom_test_files_dir() -> Path:
    """pydicom's bundled ``pydicom/data`` folder (``test_files/CT_small.dcm``, ``charset_files/chrJapMulti.dcm``)."""
    import pydicom

    return Path(pydicom.__file__).parent / "data"
