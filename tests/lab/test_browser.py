"""The market sidebar in a real browser against the devnet: lease listed, released, refunded on chain.

JupyterLab runs as a subprocess from a fresh install of this checkout's wheel
(so this also shows that `pip install` alone brings the sidebar and its server
API), pointed at the session devnet (rolled back after the test) with one
provider agent bidding. Chromium opens the sidebar; it first says what to start
while no devnet is recorded, then connects once one is; a lease is made through
the REST API and released by clicking its button, a second one by the command
palette's "release all".
"""

from __future__ import annotations

import shutil

import pytest
from eth_account import Account
from playwright.sync_api import expect

from jupyter_gpumarket.chain.devnet import DEV_MNEMONIC, DEVNET_FILE
from jupyter_gpumarket.spec import DealStatus

from .harness import LabServer, open_market_sidebar, save_screenshot, token_text


@pytest.fixture
def lab_market(chain, fresh_install, tmp_path):
    """A provider agent on the (snapshotted) session devnet and a `jupyter lab` from the fresh install.

    The lab's devnet directory starts empty; ``record_devnet()`` puts the devnet file there.
    """
    devnet_dir = tmp_path / "devnet"
    devnet_dir.mkdir()
    env = fresh_install.env(tmp_path, GPUMARKET_HOME=str(tmp_path / "gpumarket-home"),
                            DASK_GPUMARKET__DEVNET="true", DASK_GPUMARKET__DEVNET_DIR=str(devnet_dir),
                            DASK_GPUMARKET__WINDOW="2")
    lab = LabServer(str(fresh_install.python), tmp_path / "lab", env)
    try:
        chain.start_agents(count=1)  # the H100 profile: bids its 2.90 floor
        lab.start()
        chain.wait_for_providers(1, timeout=180)
        lab.wait_ready()
        yield chain, lab, lambda: shutil.copy(chain.state_dir / DEVNET_FILE, devnet_dir / DEVNET_FILE)
    finally:
        lab.stop()
        chain.stop_agents()  # before the chain fixture rolls the devnet back


def test_sidebar_lists_a_lease_and_release_refunds_on_chain_by_button_and_by_palette(lab_market, page):
    net, lab, record_devnet = lab_market
    tenant = net.client("tenant")
    decimals, symbol = tenant.token_decimals(), tenant.token_symbol()
    money = lambda amount: token_text(amount, decimals, symbol)  # noqa: E731

    panel = open_market_sidebar(page, lab)
    # No devnet recorded yet: the sidebar says what to start, once, instead of failing in every section.
    expect(panel.get_by_test_id("gpumarket-not-connected")).to_contain_text("start one with `gpumarket devnet up`")
    expect(panel.get_by_test_id("gpumarket-section-leases")).to_be_hidden()
    expect(page.get_by_test_id("gpumarket-status")).to_have_text("GPU spend: —")
    save_screenshot(page, "lab-sidebar-no-devnet")

    # The tenant also teaches: a class pool with one student's cap, shown in the instructor view.
    pool, cap, student = 50 * 10**decimals, 20 * 10**decimals, Account.create().address
    class_id = tenant.create_class(pool, approve=True).result
    tenant.set_allowance(class_id, student, cap)

    record_devnet()  # as `gpumarket devnet up` would; the next poll connects
    expect(panel.get_by_test_id("gpumarket-address")).to_have_attribute("title", tenant.address)
    expect(panel.get_by_test_id("gpumarket-balance")).to_have_text(money(tenant.balance()))
    expect(page.get_by_test_id("gpumarket-status")).to_have_text("GPU spend: none")
    students = panel.get_by_test_id(f"gpumarket-class-{class_id}")
    expect(students).to_contain_text(f"pool {money(pool)}")
    expect(students.locator(f'tr[data-student="{student}"]')).to_contain_text(f"{money(0)} / {money(cap)}")

    rented = lab.post("gpumarket/leases", {"gpus": 1, "gpu": "", "max_price": "3.00", "hours": 1})
    assert rented.status_code == 201, rented.text
    (lease_id,) = rented.json()["lease_ids"]
    lease = tenant.lease(lease_id)
    assert lease.status == DealStatus.ACTIVE and lease.gpus == 1

    row = panel.get_by_test_id(f"gpumarket-lease-{lease_id}")
    expect(row.get_by_test_id("provider")).to_have_text(f"provider {lease.provider_id}")
    expect(row.get_by_test_id("price")).to_have_text(money(lease.price_per_gpu_hour))
    expect(row.get_by_test_id("gpu")).to_have_text("NVIDIA H100 80GB HBM3 ×1")
    expect(page.get_by_test_id("gpumarket-status")).to_have_text(
        f"GPU spend: {money(lease.price_per_gpu_hour * lease.gpus)}/h")
    save_screenshot(page, "lab-sidebar-lease-listed")

    before = tenant.balance()
    row.get_by_test_id(f"gpumarket-release-{lease_id}").click()
    notice = panel.get_by_test_id("gpumarket-notice")
    expect(notice).to_contain_text(f"Lease #{lease_id} released")
    expect(row).to_have_count(0)
    expect(panel.get_by_test_id(f"gpumarket-history-{lease_id}")).to_be_visible()
    expect(page.get_by_test_id("gpumarket-status")).to_have_text("GPU spend: none")
    save_screenshot(page, "lab-sidebar-lease-released")

    # On chain: closed, the refund arrived in the tenant's wallet to the base unit, the deposit adds up,
    # and the sidebar reported the refund the chain made.
    closed = tenant.lease(lease_id)
    assert closed.status == DealStatus.CLOSED
    (event,) = tenant.get_logs("LeaseClosed", leaseId=lease_id)
    assert event["refunded"] > 0
    assert tenant.balance() - before == event["refunded"]
    expect(notice).to_contain_text(f"refunded {money(event['refunded'])}")

    # A second lease, closed from the command palette's "release all".
    rented = lab.post("gpumarket/leases", {"gpus": 1, "max_price": "3.00", "hours": 1})
    assert rented.status_code == 201, rented.text
    (second,) = rented.json()["lease_ids"]
    expect(panel.get_by_test_id(f"gpumarket-lease-{second}")).to_be_visible()
    before = tenant.balance()
    page.keyboard.press("Control+Shift+C")
    page.locator(".lm-CommandPalette-input").fill("release all")
    page.locator(".lm-CommandPalette-item", has_text="GPU market: release all leases").click()
    page.locator(".jp-Dialog").get_by_role("button", name="Release all").click()
    expect(notice).to_contain_text("Released 1 lease(s)")
    assert tenant.lease(second).status == DealStatus.CLOSED
    (event,) = tenant.get_logs("LeaseClosed", leaseId=second)
    assert tenant.balance() - before == event["refunded"] > 0
    expect(notice).to_have_text(f"Released 1 lease(s); refunded {money(event['refunded'])}.")
    paid = sum(w["amount"] for w in tenant.get_logs("PaymentWithdrawn", leaseId=lease_id)) + event["paid"]
    assert paid + event["fee"] + event["refunded"] == closed.deposit

    # The tenant's key reached neither the page nor the server log.
    Account.enable_unaudited_hdwallet_features()
    key = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{net.info.accounts['tenant']}").key.hex()
    key = key.removeprefix("0x").lower()
    assert key not in page.content().lower() and key not in lab.log(limit=None).lower()
