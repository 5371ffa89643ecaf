"""Shared fixtures: where the real scans live, and skipping cleanly without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_DIR_ENV = "SCRUBIN_DATA_DIR"


def _data_dir() -> Path | None:
    value = os.environ.get(DATA_DIR_ENV)
    if not value:
        return None
    path = Path(value)
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-scan folder (../shared/data), or a skip naming the variable to set."""
    path = _data_dir()
    if path is None:
        pytest.skip(f"real scans absent: set {DATA_DIR_ENV} to the shared data folder")
    return path


def real_data(relative: str) -> Path:
    """Path of one real dataset below SCRUBIN_DATA_DIR; skips the test when it is missing."""
    root = _data_dir()
    if root is None:
        pytest.skip(f"real scans absent: set {DATA_DIR_ENV} to the shared data folder")
    path = root / relative
    if not path.exists():
        pytest.skip(f"real scan {relative} not found under {root}")
    return path


HOLOLENS = "depth/bti_demohead_hololens2"
HOLOLENS_SCANS = ("scanned_head_cropped.pcd", *(f"views/{i}.ply" for i in range(1, 9)))


@pytest.fixture(scope="session")
def bti_skin(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The skin of the real BTI demo-head CT from ``scrubin prepare``, prepared once per run
    (several test modules register the HoloLens scans of the same head to it)."""
    from registration_fixtures import prepared_skin_folder

    from registration import SurfaceModel

    folder = prepared_skin_folder(real_data("ct/bti_demohead_dicom"), tmp_path_factory.mktemp("bti_skin"))
    return SurfaceModel.from_folder(folder, mesh="skin")


def hololens_scan(name: str):  # type: ignore[no-untyped-def]
    """One real HoloLens 2 scan of the demo head, (N, 3) mm in the headset's world frame."""
    import numpy as np
    import open3d as o3d

    return np.asarray(o3d.io.read_point_cloud(str(real_data(f"{HOLOLENS}/{name}"))).points) * 1000.0


@pytest.fixture(scope="session")
def hololens_alignments(bti_skin):  # type: ignore[no-untyped-def]
    """Each real scan aligned on its own to the CT skin, once per run: {name: Estimate}."""
    from registration import initial_alignment

    return {name: initial_alignment(bti_skin, hololens_scan(name)) for name in HOLOLENS_SCANS}


_EXIT_STATUS = {"value": 0}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS["value"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process without running C++ static destructors.

    Once in five full runs here the process aborted with "double free or corruption" after
    every test had passed and the summary was printed: the interpreter's shutdown tears down
    several bundled C++ runtimes in one process (Open3D, VTK, SimpleITK, libzmq). The tests'
    own results are final at this point (reports are written at session finish), so exit
    with their status directly rather than let teardown turn a pass into an abort.
    """
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS["value"])
