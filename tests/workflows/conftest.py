"""Fixtures for the workflow tests: one small process-based LocalCluster per test module."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster


@pytest.fixture(scope="module")
def client():
    """Two worker processes with one thread each: real processes, so a worker can be killed."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def assert_frames_match():
    """The frame comparison below, as a fixture: works whether or not tests/ is a package."""
    return _assert_frames_match


def _assert_frames_match(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same columns and rows: integers, categories, strings and datetimes exactly, floats with allclose."""
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for col in want.columns:
        a, b = got[col], want[col]
        if pd.api.types.is_float_dtype(b):
            assert np.allclose(a.to_numpy(), b.to_numpy(), equal_nan=True), col
        elif pd.api.types.is_integer_dtype(b):
            assert pd.api.types.is_integer_dtype(a), col
            assert np.array_equal(a.to_numpy(), b.to_numpy()), col
        elif pd.api.types.is_datetime64_any_dtype(b):
            assert (a.to_numpy() == b.to_numpy()).all(), col
        else:  # categories and strings: compare the labels and where they are missing
            assert (a.isna().to_numpy() == b.isna().to_numpy()).all(), col
            keep = b.notna().to_numpy()
            assert (a.astype(str).to_numpy()[keep] == b.astype(str).to_numpy()[keep]).all(), col
