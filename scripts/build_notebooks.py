"""Write the example notebooks and execute them on a fresh devnet, saving their outputs.

    .venv/bin/python scripts/build_notebooks.py [name ...]

Cells whose output varies run to run (prices, hashes, timings) carry
``# NBVAL_IGNORE_OUTPUT`` (or the ``nbval-ignore-output`` tag where a cell magic must
come first); the rest are compared by nbval in ``make test``,
with addresses and balances masked by example-notebooks/sanitize.cfg.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from jupyter_gpumarket.chain import Devnet, DevnetParams
from jupyter_gpumarket.notebook.runner import execute_notebook

HERE = Path(__file__).resolve().parents[1] / "example-notebooks"
GPU = "H100|A100|4090"


def md(text):
    return new_markdown_cell(text.strip())


def code(text, *tags):
    cell = new_code_cell(text.strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


QUICKSTART = [
    md("""
# Quickstart: rent GPUs from the market and prepare data on them

This notebook connects to a local devnet (start one with `gpumarket devnet up`), rents
two GPUs in an on-chain reverse auction, runs a data-preparation workflow on them with
Dask over mutual TLS, shows what the cell cost, and releases the lease.
On a real chain only the `connect` line changes.
"""),
    code("""
%load_ext jupyter_gpumarket
%gpumarket connect --devnet
"""),
    md("Providers on offer, with their hardware, recent prices and reliability:"),
    code("""
# NBVAL_IGNORE_OUTPUT
%gpumarket offers
"""),
    md("Some synthetic taxi trips to prepare (the workflow makes them itself; nothing is downloaded):"),
    code("""
import pathlib, tempfile
from distributed import default_client
from workflows._data import write_trips
from workflows.dataprep import run_dataprep

data = pathlib.Path(tempfile.mkdtemp(prefix="quickstart-"))
trips = write_trips(data / "trips", 200_000, n_files=4)
print(sorted(p.name for p in trips.iterdir()))
"""),
    md("""
Rent two GPUs and run the cell on them. The bid board fills during the bidding window;
the lease card ticks while the lease runs; the receipt at the end is saved with the notebook.
"""),
    code(f"""
%%gpurent --gpus 2 --gpu "{GPU}" --max-price 3.00 --hours 1 --budget 6
report = run_dataprep(default_client(), trips, data / "features")
report
""", "nbval-ignore-output"),
    code("""
print("rows in:", report.rows_in, "clean:", report.rows_clean, "features:", report.rows_out, "backend:", report.backend)
print(len(_gpurent.leases), "leases,", sum(line.gpus for line in _gpurent.leases), "GPUs, the cell cost",
      "something" if _gpurent.cost > 0 else "nothing")
"""),
    code("report.read_features().head()"),
    md("Release the lease: the provider is paid what accrued, the rest of the deposit comes back."),
    code("""
# NBVAL_IGNORE_OUTPUT
%gpumarket release all
"""),
    code("""
from jupyter_gpumarket.notebook import current_session

session = current_session()
settled = [(r, session.client.lease(r.lease_id)) for r in session.receipts]
print(len(settled), "leases settled; paid + fee + refund == deposit for each:",
      all(r.paid_to_provider + r.fee + r.refunded == lease.deposit for r, lease in settled))
%gpumarket leases
"""),
]

FINETUNE = [
    md("""
# Fine-tuning on leased GPUs: local SGD across workers

Each leased worker trains a replica of a small model on a synthetic task the workflow
makes itself; parameters are averaged every `sync_every` steps (local SGD), and a
checkpoint comes back to the notebook every round, so a lost worker costs one round.
"""),
    code("""
%load_ext jupyter_gpumarket
%gpumarket connect --devnet
"""),
    code(f"""
%%gpurent --gpus 2 --gpu "{GPU}" --max-price 3.00 --hours 1 --budget 6 --release
from distributed import default_client
from workflows.finetune import finetune

result = finetune(default_client(), steps=256, sync_every=16)
result
""", "nbval-ignore-output"),
    code("""
print("loss fell by more than half:", result.final_loss < result.initial_loss / 2)
print("held-out accuracy above 80%:", result.accuracy > 0.8)
print("checkpoint bytes came back:", len(result.checkpoint) > 0)
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
result.frame()
"""),
]

CLASSROOM = [
    md("""
# Classroom mode: a class budget with per-student caps

The instructor funds a class pool on chain and gives each student a cap; students'
leases draw on the pool, never on their own wallets, and refunds go back to the pool.
"""),
    code("""
from jupyter_gpumarket.session import Session

instructor = Session.connect(devnet=True, account="deployer")
teacher = instructor.client
teacher.mint(teacher.address, 20_000_000)          # devnet only: the instructor's test dollars
class_id = teacher.create_class(20_000_000, approve=True).result
student_address = Session.connect(devnet=True, account="stranger").client.address
teacher.set_allowance(class_id, student_address, 3_000_000)
print("pool:", instructor.money(teacher.class_info(class_id)["balance"]).short(),
      "· student cap:", instructor.money(teacher.allowance_of(class_id, student_address)["cap"]).short())
"""),
    md("The student connects in classroom mode; their wallet holds no tokens at all:"),
    code("""
%load_ext jupyter_gpumarket
%gpumarket connect --devnet --account stranger --class-id {class_id}
"""),
    code(f"""
%%gpurent --gpus 1 --gpu "{GPU}" --max-price 2.00 --hours 1 --budget 2 --release
import dask
total = dask.delayed(sum)(range(1_000)).compute()
""", "nbval-ignore-output"),
    code("""
from jupyter_gpumarket.notebook import current_session

student = current_session().client
cost = _gpurent.cost
allowance = student.allowance_of(class_id)
print("result:", total)
print("student wallet untouched:", student.balance() == 0)
print("drawn from the cap == what the lease cost:", allowance["drawn"] == sum(r.cost for r in current_session().receipts))
print("pool holds the rest:", teacher.class_info(class_id)["balance"] == 20_000_000 - allowance["drawn"])
"""),
    md("A request over the student's remaining cap is refused before any transaction:"),
    code(f"""
%%gpurent --gpus 2 --gpu "{GPU}" --max-price 3.00 --hours 1
print("not reached")
""", "raises-exception", "nbval-ignore-output"),
]

PROVIDER = [
    md("""
# Serving GPUs from a notebook

A provider agent registers this machine's GPUs (here a declared profile, since the devnet
runs on CPU), bids on orders it can serve and starts Dask workers for its leases.
"""),
    code("""
import logging

from jupyter_gpumarket.chain import Devnet
from jupyter_gpumarket.cluster.runtime import GpuProfile
from jupyter_gpumarket.market.pricing import FixedFloor
from jupyter_gpumarket.market.provider import ProviderAgent

# The agent and its workers log to this kernel; after the imports, since importing
# distributed sets its own log level.
for name in ("distributed", "jupyter_gpumarket"):
    logging.getLogger(name).setLevel(logging.ERROR)

net = Devnet.load()
account = net.client("provider3")
agent = ProviderAgent(account, GpuProfile("NVIDIA L4", 24, 121.0), FixedFloor(900_000), gpus=1).start()
before = account.balance()  # after staking
print(agent.claim)
"""),
    md("A tenant asks for exactly this GPU model, so this agent is the one that serves it:"),
    code("""
# NBVAL_IGNORE_OUTPUT
from distributed import Client
from jupyter_gpumarket.cluster.leased import LeasedCluster

cluster = LeasedCluster(gpus=1, gpu="L4", max_price="1.00", hours=1, budget="1", market=net.client("tenant"), window=4)
with Client(cluster) as client:
    squares = client.gather(client.map(lambda x: x * x, range(10)))
cluster.close()
cluster.receipts
"""),
    code("""
(receipt,) = cluster.receipts
print("squares:", squares)
print("served by this agent:", receipt.provider_id == agent.provider_id)
print("paid what the lease accrued:", account.balance() - before == receipt.paid_to_provider)
"""),
    code("""
# NBVAL_IGNORE_OUTPUT
agent.stop()
"""),
]

NOTEBOOKS = {"quickstart": QUICKSTART, "finetune": FINETUNE, "classroom": CLASSROOM, "provider": PROVIDER}


def write(name: str) -> Path:
    nb = new_notebook(cells=NOTEBOOKS[name])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = HERE / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def main(names: list[str]) -> None:
    names = names or list(NOTEBOOKS)
    with tempfile.TemporaryDirectory() as state, Devnet.up(state_dir=state, params=DevnetParams(providers=4)) as net:
        net.start_agents(count=3)
        net.wait_for_providers(3)
        for name in names:
            path = write(name)
            execute_notebook(path, state)
            print(f"executed {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
