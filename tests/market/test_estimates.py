"""Availability and price estimates from a scripted market on the devnet, checked against hand-computed values.

Every transaction gets a timestamp set by the test, so waits are exact. Three orders
for 2 GPUs; in each the RTX box bids first; the H100 box bids 2 GPUs 3 s after order 1
(won), 1 GPU 4 s after order 2 (won; the A100 adds 1 GPU 3 s later), 2 GPUs 6 s after
order 3 (never accepted).
"""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from jupyter_gpumarket.errors import InvalidRequest
from jupyter_gpumarket.market.estimates import estimate
from jupyter_gpumarket.session import RentRequest, Session
from jupyter_gpumarket.spec import GpuSpec, HardwareClaim

H100 = HardwareClaim("NVIDIA H100 80GB HBM3", 8, 80, 989.0)
A100 = HardwareClaim("NVIDIA A100-SXM4-80GB", 4, 80, 312.0)
RTX = HardwareClaim("NVIDIA GeForce RTX 4090", 2, 24, 165.0)
MAX_PRICE = 3_500_000


@pytest.fixture(scope="module")
def scripted(net):
    """Three providers; three H100 orders with bids at set times; the first two H100 bids win, the third does not.

    Module-scoped (the tests only read): rolled back with an anvil snapshot once they are done.
    """
    snapshot = net.snapshot()
    yield _script(net)
    net.revert(snapshot)


def _script(chain):
    start_block = chain.w3.eth.block_number + 1
    clock = [chain.w3.eth.get_block("latest")["timestamp"] + 10]

    def at(offset: int):
        clock[0] += offset
        chain.set_next_timestamp(clock[0])

    ids = {}
    for role, claim in (("provider0", H100), ("provider1", A100), ("provider2", RTX)):
        client = chain.client(role)
        stake = client.params()["min_stake"]
        at(1)
        ids[role] = client.register_provider(claim, "", f"http://{role}.invalid", stake, approve=True).result
    tenant = chain.client("tenant")
    at(1)
    tenant.approve(10**12)
    # ([(delay, gpus, price) of the H100 bid, then the A100's], delay of the RTX bid, accept the H100 bid?)
    script = [([(2, 2, 2_800_000)], 1, True),
              ([(3, 1, 3_000_000), (3, 1, 3_200_000)], 1, True),
              ([(4, 2, 2_600_000)], 2, False)]
    for h100_bids, rtx_delay, accept in script:
        at(5)
        order_id = tenant.create_order(GpuSpec(2, "", 0, ""), MAX_PRICE, 3600, 60, 7_000_000).result
        order_time = clock[0]
        at(rtx_delay)
        chain.client("provider2").place_bid(order_id, 600_000, 2)  # fast, but not an H100
        elapsed = rtx_delay
        won = []
        for n, (delay, gpus, price) in enumerate(h100_bids):
            role = "provider0" if n == 0 else "provider1"
            at(delay)
            elapsed += delay
            won.append(chain.client(role).place_bid(order_id, price, gpus).result)
        assert clock[0] - order_time == elapsed
        if accept:
            at(1)
            tenant.accept_bids(order_id, won[:1])  # the H100 bid wins
        at(1)
        tenant.close_order(order_id)
    return chain, ids, start_block


def test_estimate_matches_hand_computed_values(scripted):
    chain, ids, start_block = scripted
    tenant = chain.client("tenant")
    est = estimate(tenant, GpuSpec(2, "H100", 0, ""), hours=1.5, from_block=start_block)
    assert [p.provider_id for p in est.providers] == [ids["provider0"]]
    (offer,) = est.providers
    assert offer.recent_bids == (2_800_000, 3_000_000, 2_600_000) and offer.recent_wins == (2_800_000, 3_000_000)
    assert est.recent_prices == (2_800_000, 3_000_000)
    assert est.expected_price == 2_800_000 and est.price_source == "winning bids"  # lower median of 2.80, 3.00
    # Waits to the bid that brought 2 H100 GPUs: order 1 at +1+2 = 3 s; order 2 never (its H100 bid offered 1
    # GPU, the other bidder was the A100); order 3 at +2+4 = 6 s.
    assert est.wait_samples == (3, 6) and est.orders_seen == 3 and est.expected_wait_s == 3
    assert est.estimated_cost == 2_800_000 * 2 * 5400 // 3600 == 8_400_000
    assert est.capacity == 8 and not est.notes

    one = estimate(tenant, GpuSpec(1, "H100", 0, ""), hours=1, from_block=start_block)
    assert one.wait_samples == (3, 4, 6) and one.expected_wait_s == 4  # order 2: its 1-GPU H100 bid after 1+3 s

    anything = estimate(tenant, GpuSpec(2, "", 0, ""), hours=1, from_block=start_block)
    assert anything.wait_samples == (1, 1, 2)  # the RTX box offers 2 GPUs first every time
    assert anything.recent_prices == (2_800_000, 3_000_000)
    assert anything.expected_price == 2_800_000


def test_estimate_says_when_there_is_no_data(scripted):
    chain, ids, start_block = scripted
    tenant = chain.client("tenant")
    a100 = estimate(tenant, GpuSpec(4, "A100", 0, ""), hours=2, from_block=start_block)
    assert a100.recent_prices == () and a100.expected_price == 3_200_000 and a100.price_source == "bids"
    assert a100.expected_wait_s is None and a100.estimated_cost == 3_200_000 * 4 * 2
    assert any("no winning bids yet" in n for n in a100.notes)
    assert any("no recent order got 4 GPU(s)" in n for n in a100.notes)
    nothing = estimate(tenant, GpuSpec(1, "B200", 0, ""), hours=1, from_block=start_block)
    assert nothing.providers == () and nothing.expected_price is None and nothing.estimated_cost is None
    assert "no registered provider matches this GPU, memory and region" in nothing.notes
    with pytest.raises(InvalidRequest, match="hours is 0"):
        estimate(tenant, GpuSpec(1, "H100", 0, ""), hours=0)


@pytest.fixture
def shell(scripted):
    chain = scripted[0]
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_gpumarket")
    magics = ip.magics_manager.registry["GpuMarketMagics"]
    previous = magics.session
    magics.session = Session(chain.client("tenant"))
    yield ip, magics.session, scripted[1]
    magics.session = previous


def test_dry_run_prints_the_plan_and_sends_nothing(shell):
    ip, session, ids = shell
    client = session.client
    session.set_budget("20")
    before = (client.w3.eth.get_transaction_count(client.address), client.w3.eth.block_number, client.balance(),
              client.market.functions.orderCount().call())
    with capture_output() as out:
        ip.run_cell_magic("gpurent", "--gpus 2 --gpu H100 --max-price 3.50 --hours 1.5 --dry-run "
                                     "--packages 'gmtestpkg==1.2.3'", "ran = True")
    after = (client.w3.eth.get_transaction_count(client.address), client.w3.eth.block_number, client.balance(),
             client.market.functions.orderCount().call())
    assert after == before  # no transaction: same nonce, no new block, balance and orders unchanged
    assert "ran" not in ip.user_ns  # the cell body did not run
    text = out.stdout
    assert "dry run: nothing was sent to the chain" in text
    assert "deposit: 10.50 TUSD into escrow" in text  # 3.50 x 2 GPUs x 1.5 h
    assert "cap check: passes (session budget 20.00 TUSD" in text
    assert f"likely provider {ids['provider0']}: 8x NVIDIA H100 80GB HBM3, 2.80 TUSD/GPU-h" in text
    assert "expected price: 2.80 TUSD/GPU-h (median of 2 winning bids)" in text
    assert "estimated cost: 8.40 TUSD for 1.5 h" in text
    assert "expected wait: 3 s until 2 GPU(s) were offered" in text
    assert "packages for the workers: gmtestpkg==1.2.3" in text

    session.set_budget("5")
    with capture_output() as refused:
        ip.run_cell_magic("gpurent", "--gpus 2 --gpu H100 --max-price 3.50 --hours 1.5 --dry-run", "ran = True")
    assert "cap check: would be refused: this request may commit 10.50 TUSD" in refused.stdout
    assert client.w3.eth.get_transaction_count(client.address) == before[0]


def test_offers_with_a_request_shows_the_estimate(shell):
    ip, _, _ = shell
    with capture_output() as out:
        ip.run_line_magic("gpumarket", "offers --gpus 2 --gpu H100 --hours 1.5")
    assert "estimate for 2 GPU(s) matching 'H100' for 1.5 h:" in out.stdout
    assert "matching providers: 1 with 8 GPUs" in out.stdout
    assert "estimated cost: 8.40 TUSD for 1.5 h" in out.stdout


def test_dry_run_shows_the_package_set_from_the_notebook_and_refuses_bad_ones(shell, tmp_path):
    import importlib.metadata

    from IPython.core.error import UsageError

    ip, session, _ = shell
    client = session.client
    nonce = client.w3.eth.get_transaction_count(client.address)
    ip.run_cell("import yaml")
    lock = tmp_path / "requirements.txt"
    lock.write_text("gmtestpkg==1.2.3  # pinned\n")
    with capture_output() as out:
        ip.run_cell_magic("gpurent", f"--gpus 1 --gpu H100 --dry-run --packages auto --requirements {lock}", "x = 1")
    [line] = [x for x in out.stdout.splitlines() if x.startswith("packages for the workers: ")]
    assert {"gmtestpkg==1.2.3", f"pyyaml=={importlib.metadata.version('PyYAML')}"} <= set(line.split()[4:])
    assert not any(p.startswith(("ipython==", "jupyter-gpumarket==")) for p in line.split())  # kernel machinery
    with pytest.raises(UsageError, match="direct URLs are not accepted; name a version from the package index"):
        ip.run_cell_magic("gpurent", "--gpus 1 --dry-run --packages 'evil@https://example.org/x.whl'", "x = 1")
    assert client.w3.eth.get_transaction_count(client.address) == nonce
