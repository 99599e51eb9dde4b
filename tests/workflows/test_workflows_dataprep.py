"""dataprep on a LocalCluster equals the single-process pandas reference."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import pandas as pd
import pytest

from jupyter_gpumarket.cluster.backend import choose_backend, dataframe_backend, gpu_dataframe_available
from jupyter_gpumarket.errors import InvalidRequest
from workflows import EmptyDataset, MissingColumns, WrongDtype
from workflows._data import make_trips, make_zones, write_trips
from workflows.dataprep import reference_pipeline, run_dataprep

N = 40_000


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trips")
    return {
        "parquet-1": write_trips(root / "p1", N, n_files=1),
        "parquet-5": write_trips(root / "p5", N, n_files=5),
        "csv-3": write_trips(root / "c3", N, n_files=3, fmt="csv"),
    }


@pytest.fixture(scope="module")
def reference(data):
    return reference_pipeline(data["parquet-1"])


def test_synthetic_data_is_deterministic_at_any_split(data, assert_frames_match):
    files = sorted(data["parquet-5"].glob("*.parquet"))
    joined = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    assert_frames_match(joined, make_trips(N))
    raw = make_trips(N)
    assert raw["fare"].isna().any() and raw["payment_type"].isna().any()  # it is messy
    assert (raw["distance_km"] <= 0).any() and (raw["pickup_zone"] > make_zones()["zone_id"].max()).any()


@pytest.mark.parametrize(("name", "blocksize", "partitions"),
                         [("parquet-1", None, 1), ("parquet-5", None, 5), ("csv-3", 300_000, 4)])
def test_matches_reference(client, data, reference, tmp_path, name, blocksize, partitions,
                           assert_frames_match):
    report = run_dataprep(client, data[name], tmp_path / "out", blocksize=blocksize)
    assert report.partitions_in >= partitions
    assert (report.rows_in, report.rows_clean, report.rows_out) == (
        N, int(reference["trips"].sum()), len(reference))
    assert report.backend == choose_backend(client) and report.files_out >= 28  # a file per day
    got = report.read_features()
    assert_frames_match(got, reference if name != "csv-3" else reference_pipeline(data[name]))


def test_dask_frame_source_and_progress(client, tmp_path, assert_frames_match):
    trips = make_trips(N)
    report = run_dataprep(client, dd.from_pandas(trips, npartitions=7), tmp_path / "out", progress=True)
    assert report.partitions_in == 7
    assert_frames_match(report.read_features(), reference_pipeline(trips))
    frame = report.read_features()
    assert frame.groupby("borough", observed=True)["trips"].sum().sum() == report.rows_clean


@pytest.mark.skipif(gpu_dataframe_available(), reason="checks the CPU fallback")
def test_backend_switch(client):
    assert choose_backend() == choose_backend(client) == "pandas"
    with dataframe_backend(client) as name:
        assert dask.config.get("dataframe.backend") == name == "pandas"
    with pytest.raises(InvalidRequest, match="cudf"):
        choose_backend(client, prefer="cudf")
    with pytest.raises(InvalidRequest, match="must be one of"):
        choose_backend(prefer="polars")


def _write(tmp_path, frame):
    tmp_path.mkdir(exist_ok=True)
    frame.to_parquet(tmp_path / "part-0.parquet", index=False)
    return tmp_path


@pytest.mark.parametrize(("mutate", "error", "words"), [
    (lambda f: f.drop(columns=["fare"]), MissingColumns, "missing column(s) ['fare']"),
    (lambda f: f.assign(fare=f["fare"].astype(str)), WrongDtype, "column 'fare' has dtype"),
    (lambda f: f.assign(pickup_ts=f["pickup_ts"].astype("int64")), WrongDtype, "'pickup_ts'"),
    (lambda f: f.iloc[:0], EmptyDataset, "has no rows"),
    (lambda f: f.assign(fare=-1.0), EmptyDataset, "left after cleaning"),
])
def test_bad_input(client, tmp_path, mutate, error, words):
    src = _write(tmp_path / "bad", mutate(make_trips(2_000)))
    for run in (lambda: run_dataprep(client, src, tmp_path / "out"), lambda: reference_pipeline(src)):
        with pytest.raises(error) as info:
            run()
        assert isinstance(info.value, InvalidRequest)
        assert words in str(info.value)


def test_bad_zones_and_empty_directory(client, tmp_path, data):
    with pytest.raises(MissingColumns, match="zones table is missing column"):
        run_dataprep(client, data["parquet-1"], tmp_path / "out", zones=make_zones().drop(columns="borough"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDataset, match=r"has no \.parquet files"):
        run_dataprep(client, tmp_path / "empty", tmp_path / "out", fmt="parquet")
