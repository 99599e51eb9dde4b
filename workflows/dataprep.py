"""Data preparation on taxi trips: read, clean, join, hourly features, write Parquet.

The row-wise steps are plain functions of one frame (:func:`clean`,
:func:`join_zones`, :func:`add_window_columns`, run together as :func:`prepare`,
one task per partition), followed by one group-by and :func:`finish_features`.
The Dask graph and :func:`reference_pipeline` (single-process pandas, which
tests and the benchmark compare against) call the same functions.

>>> from distributed import Client, LocalCluster              # doctest: +SKIP
>>> from workflows._data import write_trips
>>> src = write_trips(tmp / "trips", 100_000, n_files=4)       # doctest: +SKIP
>>> report = run_dataprep(client, src, tmp / "features")       # doctest: +SKIP
>>> report.rows_in, report.backend                             # doctest: +SKIP
(100000, 'pandas')
>>> report.read_features().plot(x="window_start", y="trips")   # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import dask.dataframe as dd
import pandas as pd

from jupyter_gpumarket.cluster.backend import dataframe_backend, to_backend

from ._common import EmptyDataset, WorkflowInputError, check_columns, show_progress
from ._data import BOROUGHS, PAYMENT_TYPES, TRIPS_SCHEMA, ZONES_SCHEMA, make_zones

# Cleaning bounds: anything outside is an outlier or a data-entry error.
MAX_KM, MAX_FARE, MAX_MINUTES, MAX_KMH = 200.0, 500.0, 360.0, 150.0
PAYMENT_DTYPE = pd.CategoricalDtype([*PAYMENT_TYPES, "unknown"])
BOROUGH_DTYPE = pd.CategoricalDtype([*BOROUGHS, "Unknown"])
KEYS = ["window_start", "borough"]
AGGREGATIONS = {
    "trips": ("trip_id", "count"),
    "passengers": ("passenger_count", "sum"),
    "fare_sum": ("fare", "sum"),
    "fare_max": ("fare", "max"),
    "distance_sum": ("distance_km", "sum"),
    "duration_sum": ("duration_min", "sum"),
    "tip_sum": ("tip", "sum"),
    "card_trips": ("is_card", "sum"),
    "airport_trips": ("is_airport", "sum"),
}
PARTITION_COLUMN = "pickup_date"
NOTHING_LEFT = "no trips are left after cleaning (all rows missing values or outliers)"


@dataclass(frozen=True)
class DataprepReport:
    """What :func:`run_dataprep` did; ``read_features()`` loads the output for plotting."""

    rows_in: int
    rows_clean: int
    rows_out: int
    partitions_in: int
    files_out: int
    backend: str
    seconds: float
    output: str

    def read_features(self) -> pd.DataFrame:
        """The written feature table as one pandas frame, sorted by window and borough."""
        frame = pd.read_parquet(self.output)
        frame[PARTITION_COLUMN] = frame[PARTITION_COLUMN].astype(str)
        return frame.sort_values(KEYS, ignore_index=True)

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- per-frame steps
def clean(df):
    """Drop rows missing essentials or outside physical bounds; fix types and fill gaps."""
    df = df.dropna(subset=["pickup_ts", "dropoff_ts", "fare", "distance_km"])
    pickup = df["pickup_ts"].astype("datetime64[ns]")  # CSV parses at coarser resolutions
    dropoff = df["dropoff_ts"].astype("datetime64[ns]")
    minutes = (dropoff - pickup).dt.total_seconds() / 60.0
    km, fare = df["distance_km"].astype("float64"), df["fare"].astype("float64")
    keep = ((km > 0) & (km <= MAX_KM) & (fare > 0) & (fare <= MAX_FARE)
            & (minutes > 0) & (minutes <= MAX_MINUTES) & (km / (minutes / 60.0) <= MAX_KMH))
    payment = df["payment_type"].astype("str")
    payment = payment.where(payment.isin(PAYMENT_TYPES), "unknown")  # NaN or novel codes
    out = df.assign(
        trip_id=df["trip_id"].astype("int64"),
        pickup_ts=pickup,
        dropoff_ts=dropoff,
        pickup_zone=df["pickup_zone"].astype("int64"),
        passenger_count=df["passenger_count"].fillna(1).clip(1, 6).astype("int8"),
        distance_km=km,
        fare=fare,
        tip=df["tip"].astype("float64").fillna(0.0).clip(lower=0.0),
        payment_type=payment.astype(PAYMENT_DTYPE),
        duration_min=minutes,
    )
    return out[keep]


def prepare_zones(zones: pd.DataFrame) -> pd.DataFrame:
    """The dimension columns the join needs, with join-friendly types."""
    return pd.DataFrame({
        "pickup_zone": zones["zone_id"].astype("int64").to_numpy(),
        "borough": zones["borough"].astype("str").to_numpy(),
        "airport": zones["airport"].astype(bool).to_numpy(),
    })


def join_zones(df, zones):
    """Left-join trips to zones; trips from unknown zones keep borough ``"Unknown"``.

    ``zones`` is a small pandas frame shipped with each task (a broadcast join,
    no shuffle); it is converted when the partition is a GPU frame.
    """
    if not isinstance(df, pd.DataFrame):
        zones = type(df).from_pandas(zones)
    out = df.merge(zones, on="pickup_zone", how="left")
    return out.assign(
        borough=out["borough"].fillna("Unknown").astype(BOROUGH_DTYPE),
        airport=out["airport"].fillna(False).astype(bool),
    )


def add_window_columns(df, window: str = "1h"):
    """Tumbling time window plus the integer indicators the group-by sums."""
    return df.assign(
        window_start=df["pickup_ts"].dt.floor(window),
        passenger_count=df["passenger_count"].astype("int64"),
        is_card=(df["payment_type"] == "card").astype("int64"),
        is_airport=df["airport"].astype("int64"),
    )


def prepare(df, zones, window: str = "1h"):
    """Clean, join and window one frame: every row-wise step, fused into one task per partition."""
    return add_window_columns(join_zones(clean(df), zones), window)


def finish_features(agg):
    """Derived ratios and the partition column, from the summed group-by output."""
    out = agg.reset_index()
    out = out.assign(
        fare_mean=out["fare_sum"] / out["trips"],
        distance_mean=out["distance_sum"] / out["trips"],
        tip_rate=out["tip_sum"] / out["fare_sum"],
        speed_kmh=out["distance_sum"] / (out["duration_sum"] / 60.0),
        **{PARTITION_COLUMN: out["window_start"].dt.strftime("%Y-%m-%d")},
    )
    return out.sort_values(KEYS).reset_index(drop=True)


# ---------------------------------------------------------------- inputs
def _files(source, fmt: str) -> list[str]:
    path = Path(source)
    files = sorted(str(p) for p in path.glob(f"*.{fmt}")) if path.is_dir() else [str(path)]
    if path.is_dir() and not files:
        raise EmptyDataset(f"trips data set {str(path)!r} has no .{fmt} files")
    if not path.exists():
        raise WorkflowInputError(f"trips data set {str(path)!r} does not exist")
    return files


def _infer_format(source, fmt: str | None) -> str:
    if fmt is None:
        path = Path(source)
        fmt = "csv" if path.suffix == ".csv" or (path.is_dir() and any(path.glob("*.csv"))) else "parquet"
    if fmt not in ("parquet", "csv"):
        raise WorkflowInputError(f"fmt must be 'parquet' or 'csv', not {fmt!r}")
    return fmt


def _load_zones(zones) -> pd.DataFrame:
    if zones is None:
        zones = make_zones()
    elif not isinstance(zones, pd.DataFrame):
        zones = pd.read_csv(zones) if str(zones).endswith(".csv") else pd.read_parquet(zones)
    check_columns(zones, ZONES_SCHEMA, what="zones table")
    return prepare_zones(zones)


def _read_kwargs(fmt: str) -> dict:
    # Explicit types keep every CSV block's dtypes equal to the meta dask infers.
    if fmt == "csv":
        return {"parse_dates": ["pickup_ts", "dropoff_ts"], "dtype": {"payment_type": "str"}}
    return {}


# ---------------------------------------------------------------- pipelines
def reference_pipeline(source, zones=None, *, fmt: str | None = None, window: str = "1h",
                       output=None) -> pd.DataFrame:
    """Single-process pandas version of :func:`run_dataprep`; returns the feature table.

    ``source`` is a directory or file (Parquet or CSV) or a pandas frame of trips.
    With ``output``, also writes the same partitioned Parquet layout.

    >>> from workflows._data import make_trips
    >>> reference_pipeline(make_trips(1000)).columns[:3].tolist()
    ['window_start', 'borough', 'trips']
    """
    if isinstance(source, pd.DataFrame):
        trips = source
    else:
        fmt = _infer_format(source, fmt)
        files = _files(source, fmt)
        reader = pd.read_csv if fmt == "csv" else pd.read_parquet
        trips = pd.concat([reader(f, **_read_kwargs(fmt)) for f in files], ignore_index=True)
    check_columns(trips, TRIPS_SCHEMA, what="trips data set")
    if len(trips) == 0:
        raise EmptyDataset("trips data set has no rows")
    frame = prepare(trips, _load_zones(zones), window)
    if len(frame) == 0:
        raise EmptyDataset(NOTHING_LEFT)
    agg = frame.groupby(KEYS, observed=True).agg(**AGGREGATIONS)
    features = finish_features(agg)
    if output is not None:
        features.to_parquet(output, partition_cols=[PARTITION_COLUMN], index=False)
    return features


def build_graph(trips: dd.DataFrame, zones: pd.DataFrame, *, window: str = "1h"):
    """Lazy feature table (a dask collection) for a raw trips collection."""
    check_columns(trips._meta, TRIPS_SCHEMA, what="trips data set")
    rows = trips.map_partitions(prepare, zones, window, meta=prepare(trips._meta, zones.iloc[:0], window))
    agg = rows.groupby(KEYS, observed=True).agg(split_out=1, **AGGREGATIONS)
    features = agg.map_partitions(finish_features, meta=finish_features(agg._meta))
    return features


def run_dataprep(client, source, output, *, zones=None, fmt: str | None = None,
                 window: str = "1h", blocksize: str | int | None = "64MB",
                 backend: str | None = None, progress: bool = False) -> DataprepReport:
    """Run the pipeline on ``client``'s workers and write features as Parquet under
    ``output``, partitioned by ``pickup_date``.

    ``source``: a directory or file of Parquet or CSV trips (``fmt`` inferred
    from the suffix), or a dask DataFrame. ``zones``: dimension table (frame or
    path; default: the synthetic one). ``backend``: force ``"pandas"`` or
    ``"cudf"``; by default cuDF where every worker has a GPU. ``progress``:
    show Dask's progress bar.
    """
    started = time.perf_counter()
    zones_pd = _load_zones(zones)
    with dataframe_backend(client, prefer=backend) as name:
        if isinstance(source, dd.DataFrame):
            trips, fmt = to_backend(source, name), "dask"
        else:
            fmt = _infer_format(source, fmt)
            files = _files(source, fmt)
            trips = (dd.read_csv(files, blocksize=blocksize, **_read_kwargs(fmt)) if fmt == "csv"
                     else dd.read_parquet(files))
        features = build_graph(trips, zones_pd, window=window)
        # Parquet footers give the row count without reading data; otherwise count the
        # partitions in the same persist, which shares the one read of the input.
        rows = trips.shape[0] if fmt == "parquet" else trips.map_partitions(len).sum()
        features, rows = client.persist([features, rows])  # small: a row per window and borough
        if progress:
            show_progress(features, rows)
        # every clean row lands in exactly one group, so the group counts sum to the clean rows
        rows_in, rows_clean, rows_out = (int(x) for x in client.compute(
            [rows, features["trips"].sum(), features.shape[0]], sync=True))
        if rows_in == 0:
            raise EmptyDataset("trips data set has no rows")
        if rows_clean == 0:
            raise EmptyDataset(NOTHING_LEFT)
        write = features.to_parquet(str(output), partition_on=[PARTITION_COLUMN],
                                    write_index=False, compute=False)
        client.compute(write).result()
    files_out = sum(1 for _ in Path(output).rglob("*.parquet")) if Path(output).exists() else 0
    return DataprepReport(rows_in=rows_in, rows_clean=rows_clean, rows_out=rows_out,
                          partitions_in=trips.npartitions, files_out=files_out, backend=name,
                          seconds=time.perf_counter() - started, output=str(output))


__all__ = [
    "AGGREGATIONS",
    "DataprepReport",
    "add_window_columns",
    "build_graph",
    "clean",
    "finish_features",
    "join_zones",
    "prepare",
    "reference_pipeline",
    "run_dataprep",
]
