"""Synthetic taxi trips: deterministic at any size, with the mess real data has.

Rows are generated in fixed chunks seeded by ``(seed, chunk)``, so row ``i`` is
the same whatever the total size or the number of files it is split into.

>>> trips = make_trips(5, seed=1)
>>> list(trips.columns)[:4]
['trip_id', 'pickup_ts', 'dropoff_ts', 'pickup_zone']
>>> make_trips(5, seed=1).equals(make_trips(8, seed=1).head(5))
True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CHUNK = 65_536
START = np.datetime64("2024-01-01T00:00:00", "s")
DAYS = 28
N_ZONES = 60  # zone ids 1..N_ZONES exist; a few trips use ids above that (unknown zone)
BOROUGHS = ["Bronx", "Brooklyn", "EWR", "Manhattan", "Queens", "Staten Island"]
PAYMENT_TYPES = ["card", "cash", "no_charge", "dispute"]

#: Raw trip columns and the kind of dtype each must have.
TRIPS_SCHEMA = {
    "trip_id": "integer",
    "pickup_ts": "datetime",
    "dropoff_ts": "datetime",
    "pickup_zone": "integer",
    "passenger_count": "numeric",
    "distance_km": "numeric",
    "fare": "numeric",
    "tip": "numeric",
    "payment_type": "text",
}
ZONES_SCHEMA = {"zone_id": "integer", "borough": "text", "airport": "flag"}


def make_zones(seed: int = 0) -> pd.DataFrame:
    """The dimension table: one row per zone (``zone_id``, ``zone_name``, ``borough``, ``airport``)."""
    rng = np.random.default_rng([seed, 2**31])
    ids = np.arange(1, N_ZONES + 1, dtype="int32")
    borough = pd.Series(np.array(BOROUGHS)[rng.integers(0, len(BOROUGHS), N_ZONES)], dtype="str")
    airport = np.zeros(N_ZONES, dtype=bool)
    airport[rng.choice(N_ZONES, 3, replace=False)] = True
    names = pd.Series([f"Zone {i:03d}" for i in ids], dtype="str")
    return pd.DataFrame({"zone_id": ids, "zone_name": names, "borough": borough, "airport": airport})


def _chunk(seed: int, index: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, index])
    n = CHUNK
    pickup = START + rng.integers(0, DAYS * 86_400, n).astype("timedelta64[s]")
    minutes = rng.lognormal(2.5, 0.6, n)
    bad = rng.random(n)
    minutes[bad < 0.002] *= -1  # dropoff before pickup
    minutes[(bad >= 0.002) & (bad < 0.003)] *= 60  # forgotten meter
    dropoff = pickup + (minutes * 60).astype("timedelta64[s]")
    distance = rng.lognormal(1.0, 0.7, n)
    distance[bad > 0.997] = -distance[bad > 0.997]
    distance[(bad > 0.995) & (bad <= 0.997)] *= 1000
    fare = 2.5 + 1.6 * distance + 0.35 * minutes + rng.normal(0, 1.0, n)
    payment = np.array(PAYMENT_TYPES)[rng.choice(4, n, p=[0.68, 0.28, 0.03, 0.01])]
    tip = np.where(payment == "card", fare * rng.uniform(0.0, 0.3, n), 0.0)
    passengers = rng.choice(7, n, p=[0.01, 0.6, 0.2, 0.08, 0.05, 0.03, 0.03]).astype("float64")
    # missing values the way exports produce them
    miss = rng.random((4, n))
    fare[miss[0] < 0.01] = np.nan
    passengers[miss[1] < 0.02] = np.nan
    tip[miss[2] < 0.01] = np.nan
    payment_s = pd.Series(payment, dtype="str").mask(miss[3] < 0.01)
    return pd.DataFrame({
        "trip_id": np.arange(index * n, (index + 1) * n, dtype="int64"),
        "pickup_ts": pickup.astype("datetime64[ns]"),
        "dropoff_ts": dropoff.astype("datetime64[ns]"),
        "pickup_zone": rng.integers(1, N_ZONES + 4, n).astype("int32"),
        "passenger_count": passengers,
        "distance_km": distance.round(3),
        "fare": fare.round(2),
        "tip": tip.round(2),
        "payment_type": payment_s,
    })


def make_trips(n_rows: int, seed: int = 0, start: int = 0) -> pd.DataFrame:
    """Rows ``start .. start + n_rows`` of the synthetic trip table for ``seed``."""
    if n_rows <= 0:
        return _chunk(seed, 0).iloc[:0].reset_index(drop=True)
    first, last = start // CHUNK, (start + n_rows - 1) // CHUNK
    frame = pd.concat([_chunk(seed, i) for i in range(first, last + 1)], ignore_index=True)
    offset = start - first * CHUNK
    return frame.iloc[offset:offset + n_rows].reset_index(drop=True)


def write_trips(path: str | Path, n_rows: int, *, n_files: int = 4, fmt: str = "parquet",
                seed: int = 0) -> Path:
    """Write ``n_rows`` trips as ``n_files`` files (``part-00000.parquet`` ...) under ``path``.

    ``fmt`` is ``"parquet"`` or ``"csv"``. Returns the directory.
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', not {fmt!r}")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n_rows, n_files + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = make_trips(int(b - a), seed=seed, start=int(a))
        target = out / f"part-{i:05d}.{fmt}"
        if fmt == "parquet":
            part.to_parquet(target, index=False)
        else:
            part.to_csv(target, index=False, date_format="%Y-%m-%d %H:%M:%S")
    return out
