"""Auction selection and pricing: pure functions over spec objects, no chain."""

from __future__ import annotations

import pytest

from jupyter_gpumarket.errors import InvalidRequest
from jupyter_gpumarket.market.auction import cost_score, select_bids
from jupyter_gpumarket.market.pricing import FixedFloor, MarketView, Undercut, UtilisationBased, strategy_from_name
from jupyter_gpumarket.spec import Bid, GpuSpec, HardwareClaim, Provider

H100 = HardwareClaim("NVIDIA H100 80GB HBM3", 8, 80, 989.0)
A100 = HardwareClaim("NVIDIA A100-SXM4-80GB", 4, 80, 312.0)
RTX = HardwareClaim("NVIDIA GeForce RTX 4090", 2, 24, 165.0)


def provider(pid, claim, completed=0, rejected=0, lost=0, region="eu"):
    return Provider(pid, f"0x{pid:040x}", 0, claim, True, leases_completed=completed, leases_rejected=rejected,
                    disputes_lost=lost, region=region)


PROVIDERS = {1: provider(1, H100), 2: provider(2, A100), 3: provider(3, RTX)}


def bid(bid_id, provider_id, price, gpus=1):
    return Bid(bid_id, 1, provider_id, price, gpus)


def ids(selection):
    return [b.id for b in selection.accepted]


def test_cost_rule_prefers_cheapest_work_not_cheapest_hour():
    bids = [bid(1, 1, 2_900_000), bid(2, 2, 1_800_000), bid(3, 3, 700_000)]
    # per TFLOP-hour: H100 2932, A100 5769, RTX 4242
    assert ids(select_bids(bids, PROVIDERS, gpus=2)) == [1, 3]
    assert ids(select_bids(bids, PROVIDERS, gpus=2, rule="price")) == [3, 2]


def test_measured_throughput_overrides_the_claim():
    bids = [bid(1, 1, 2_900_000), bid(3, 3, 700_000)]
    # The "H100" attested at a tenth of its claim: it no longer wins on cost.
    selection = select_bids(bids, PROVIDERS, gpus=1, measured_tflops={1: 98.9})
    assert ids(selection) == [3]


def test_reputation_discounts_throughput():
    honest = provider(1, H100, completed=20)
    flaky = provider(2, H100, completed=2, rejected=8)
    assert honest.reliability > 0.9 and flaky.reliability < 0.3
    bids = [bid(1, 1, 2_500_000), bid(2, 2, 2_000_000)]
    assert ids(select_bids(bids, {1: honest, 2: flaky}, gpus=1)) == [1]
    assert cost_score(bids[1], flaky) > cost_score(bids[0], honest)


def test_ties_go_to_lower_price_then_earlier_bid():
    twin = {1: provider(1, H100), 2: provider(2, H100), 3: provider(3, H100)}
    bids = [bid(7, 1, 2_000_000), bid(5, 2, 2_000_000), bid(9, 3, 2_000_000)]
    assert ids(select_bids(bids, twin, gpus=2)) == [5, 7]
    assert ids(select_bids(bids, twin, gpus=2, rule="price")) == [5, 7]


def test_partial_fill_takes_what_there_is():
    selection = select_bids([bid(1, 1, 2_000_000, gpus=2)], PROVIDERS, gpus=4)
    assert ids(selection) == [1] and selection.gpus == 2 and not selection.complete


def test_whole_bids_only_never_overshoot():
    bids = [bid(1, 1, 1_000_000, gpus=3), bid(2, 2, 2_000_000, gpus=2)]
    selection = select_bids(bids, PROVIDERS, gpus=2)
    assert ids(selection) == [2]
    assert "only 2 still wanted" in selection.passed_over[1]


def test_budget_limits_the_selection():
    bids = [bid(1, 1, 2_900_000), bid(3, 3, 700_000)]
    # 2 hours: the H100 would cost 5.8, the RTX 1.4; a budget of 3.0 takes only the RTX.
    selection = select_bids(bids, PROVIDERS, gpus=2, budget=3_000_000, hours=2)
    assert ids(selection) == [3]
    assert selection.passed_over[1] == "over budget"
    assert selection.cost_per_hour == 700_000


def test_budget_below_one_hour_of_the_cheapest_takes_nothing():
    selection = select_bids([bid(3, 3, 700_000)], PROVIDERS, gpus=1, budget=699_999, hours=1)
    assert selection.accepted == [] and selection.passed_over == {3: "over budget"}


def test_spec_screens_bids_against_on_chain_claims():
    bids = [bid(1, 1, 2_900_000), bid(3, 3, 700_000)]
    selection = select_bids(bids, PROVIDERS, gpus=2, spec=GpuSpec(2, "H100|A100", 40))
    assert ids(selection) == [1]
    assert "does not match" in selection.passed_over[3]


def test_unknown_rule_is_refused():
    with pytest.raises(InvalidRequest, match="use 'cost' or 'price'"):
        select_bids([], PROVIDERS, gpus=1, rule="cheapest")


@pytest.mark.parametrize(
    "strategy,view,expected",
    [
        (FixedFloor(2_000_000), MarketView(), 2_000_000),
        (FixedFloor(4_000_000), MarketView(), None),  # above the order's max: sit out
        (UtilisationBased(1_000_000, 3_000_000), MarketView(utilisation=0.0), 1_000_000),
        (UtilisationBased(1_000_000, 3_000_000), MarketView(utilisation=0.5), 2_000_000),
        (UtilisationBased(1_000_000, 5_000_000), MarketView(utilisation=1.0), 3_000_000),  # capped at max
        (Undercut(1_500_000, 10_000), MarketView(), 3_000_000),  # alone: ask the max
        (Undercut(1_500_000, 10_000), MarketView(best_bid=2_000_000), 1_990_000),
        (Undercut(1_500_000, 10_000), MarketView(best_bid=1_505_000), None),  # would go under the floor
    ],
)
def test_pricing_strategies(strategy, view, expected):
    assert strategy.price(3_000_000, view) == expected


def test_strategy_names_and_bad_parameters():
    assert isinstance(strategy_from_name("undercut", 1_000_000), Undercut)
    assert strategy_from_name("utilisation", 1_000_000).ceiling == 2_000_000
    with pytest.raises(InvalidRequest, match="choose floor, utilisation or undercut"):
        strategy_from_name("greedy", 1)
    with pytest.raises(InvalidRequest, match="positive int of base units"):
        FixedFloor(2.5)
    with pytest.raises(InvalidRequest, match="below floor"):
        UtilisationBased(3, 2)
