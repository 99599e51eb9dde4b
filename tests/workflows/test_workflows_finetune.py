"""finetune: learns the shipped task, matches one process, survives a killed worker."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

pytest.importorskip("torch")  # the [finetune] extra

from jupyter_gpumarket.errors import InvalidRequest
from workflows import ModelTooLarge, WorkflowInputError
from workflows.finetune import SyntheticTask, finetune, train_single_process


def test_learns_and_matches_single_process(client):
    result = finetune(client, steps=512, sync_every=32)
    single = train_single_process(steps=1024)  # same samples: 2 workers x 512 steps
    assert result.samples_seen == single.samples_seen
    assert result.history[-1]["train_loss"] <= 0.5 * result.initial_loss
    assert result.final_loss <= 0.5 * result.initial_loss
    assert abs(result.accuracy - single.accuracy) <= 0.02
    assert result.accuracy > 0.8 and set(result.devices) <= {"cpu", "cuda"}
    frame = result.frame()
    assert len(frame) == 16 and frame["bytes"].is_monotonic_increasing
    assert result.bytes_communicated == frame["bytes"].iloc[-1] > 0
    assert not result.recovered_rounds


def test_resume_from_checkpoint_continues_the_same_run(client):
    whole = finetune(client, steps=96, sync_every=16, outer="nesterov")
    first = finetune(client, steps=48, sync_every=16, outer="nesterov")
    rest = finetune(client, steps=96, sync_every=16, outer="nesterov", resume_from=first.checkpoint)
    assert [row["round"] for row in rest.history] == [3, 4, 5]
    assert rest.final_loss == pytest.approx(whole.final_loss, rel=1e-5)


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"max_memory_bytes": 100_000}, ModelTooLarge, "max_memory_bytes is 0.1 MiB"),
    ({"task": SyntheticTask(hidden=4096), "max_memory_bytes": 2**26}, ModelTooLarge, "parameters"),
    ({"sync_every": 0}, WorkflowInputError, "sync_every must be > 0"),
    ({"batch_size": -1}, WorkflowInputError, "batch_size must be > 0"),
    ({"outer": "adam"}, WorkflowInputError, "outer must be one of"),
    ({"task": "mnist"}, WorkflowInputError, "task must be a SyntheticTask"),
])
def test_bad_input(client, kwargs, error, words):
    with pytest.raises(error) as info:
        finetune(client, steps=16, **kwargs)
    assert isinstance(info.value, InvalidRequest)
    assert words in str(info.value)


def test_worker_killed_mid_round_is_recovered(client):
    victim = sorted(client.nthreads())[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    box: dict = {}

    def train():
        box["result"] = finetune(client, steps=768, sync_every=128)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 60
    # wait until the victim is running a round that has a checkpoint before it
    while not any("round0" not in key for key in client.processing(workers=[victim]).get(victim, ())):
        assert time.monotonic() < deadline and thread.is_alive(), "no round reached the victim"
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)  # the worker process dies mid-round, as a lost machine would
    thread.join(timeout=120)
    result = box["result"]
    assert result.recovered_rounds and result.recovered_rounds[0] >= 1
    assert len(result.history) == 6  # every round completed
    assert result.final_loss <= 0.5 * result.initial_loss
    client.wait_for_workers(2, timeout=30)  # the nanny restarts the killed worker
