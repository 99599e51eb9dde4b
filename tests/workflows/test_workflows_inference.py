"""inference: equals running the model locally; the model is deserialised once per worker."""

from __future__ import annotations

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")  # the [finetune] extra

from jupyter_gpumarket.errors import InvalidRequest
from workflows import EmptyDataset, MissingColumns, ModelTooLarge, WorkflowInputError, WrongDtype
from workflows.inference import ModelPayload, load_counts, predict

FEATURES = ["x0", "x1", "x2", "x3"]


def make_model(seed: int, outputs: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, outputs))


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(3_000, 4)).astype("float32"), columns=FEATURES)
    return df.assign(label=pd.Series(rng.choice(["a", "b"], 3_000), dtype="str"))


def local_outputs(model, df) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(df[FEATURES].to_numpy()))


def test_matches_local_model_and_loads_once_per_worker(client, frame):
    model = make_model(seed=1)
    ddf = dd.from_pandas(frame, npartitions=12)
    got = predict(client, ddf, model, FEATURES, batch_size=100, progress=True).compute()
    want = local_outputs(model, frame)
    pd.testing.assert_frame_equal(got[FEATURES], frame[FEATURES])  # rows intact, in order
    assert (got["label"].astype(object) == frame["label"].astype(object)).all()
    assert np.array_equal(got["prediction"].to_numpy(), want.argmax(1).numpy())
    assert np.allclose(got["confidence"].to_numpy(), want.softmax(1).max(1).values.numpy(), atol=1e-6)
    token = ModelPayload.from_model(model).token
    loads = [counts.get(token, 0) for counts in client.run(load_counts).values()]
    assert max(loads) == 1 and 1 <= sum(loads) <= 2 < ddf.npartitions  # not once per partition
    predict(client, ddf, model, FEATURES).compute()  # a second run reuses the cached copies
    assert [c.get(token, 0) for c in client.run(load_counts).values()] == loads


def test_regression_model_gives_values(client, frame):
    model = make_model(seed=2, outputs=1)
    got = predict(client, dd.from_pandas(frame, npartitions=3), model, FEATURES).compute()
    assert "confidence" not in got
    assert np.allclose(got["prediction"].to_numpy(), local_outputs(model, frame)[:, 0].numpy(), atol=1e-6)


@pytest.mark.parametrize(("change", "error", "words"), [
    ({"columns": ["x0", "nope"]}, MissingColumns, "missing column(s) ['nope']"),
    ({"columns": ["x0", "x1", "x2", "label"]}, WrongDtype, "column 'label' has dtype"),
    ({"columns": ["x0", "x1"]}, WorkflowInputError, "does not accept 2 input features"),
    ({"rows": 0}, EmptyDataset, "no rows"),
    ({"max_memory_bytes": 1_000}, ModelTooLarge, "max_memory_bytes"),
    ({"batch_size": 0}, WorkflowInputError, "batch_size must be > 0"),
])
def test_bad_input(client, frame, change, error, words):
    kw = {"columns": FEATURES, **change}
    ddf = dd.from_pandas(frame.iloc[:kw.pop("rows", len(frame))], npartitions=2)
    with pytest.raises(error) as info:
        predict(client, ddf, make_model(seed=3), kw.pop("columns"), **kw)
    assert isinstance(info.value, InvalidRequest)
    assert words in str(info.value)
