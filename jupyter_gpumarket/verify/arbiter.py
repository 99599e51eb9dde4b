"""The arbiter's side of a dispute: check the tenant's evidence, re-run the one task, resolve on chain.

An account with the market's ``ARBITER_ROLE`` (the deployer on a devnet)
resolves a dispute opened with :func:`~.spotcheck.open_dispute`. It trusts
neither party: every fact in the evidence is checked against a signature or
a hash before the task is re-run.

1. The evidence's hash is the one recorded by the ``DisputeOpened`` event.
2. The receipt is signed by the lease's provider (its on-chain owner) for this
   lease, and the per-task hashes it lists fold into what it signs.
3. The disputed task is among them, with the hash the evidence states; the
   delivered result the tenant hands over has that hash (so it is what the
   provider delivered), and each input has the hash the evidence lists.
4. The arbiter runs the task on those inputs. The provider is at fault when the
   delivered result does not match (:func:`~.compare.results_match`); then
   ``slash`` of its stake (default: the market's minimum stake) goes to the
   tenant. Otherwise, or when any check above fails, the dispute is resolved for
   the provider and nothing moves.

Example (devnet)::

    verdict = Arbiter(net.client("deployer")).resolve(mismatch.evidence, mismatch.task,
                                                      mismatch.inputs, mismatch.delivered)
    verdict.provider_at_fault, verdict.slashed
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import NotAuthorized
from .compare import results_match
from .hashing import combine_result_hashes, hash_result, hash_task_keys
from .heartbeat import HeartbeatDomain
from .spotcheck import Evidence

__all__ = ["Arbiter", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    lease_id: int
    provider_at_fault: bool
    slashed: int  # base units moved from the provider's stake to the tenant
    reason: str
    tx_hash: str


class Arbiter:
    """Resolves disputes with an arbiter account's :class:`~jupyter_gpumarket.chain.MarketClient`."""

    def __init__(self, client, slash: int | None = None, rtol: float = 1e-6, atol: float = 1e-9) -> None:
        self.client = client
        self.slash = slash
        self.rtol, self.atol = rtol, atol

    def check(self, evidence: Evidence, inputs: dict, delivered) -> None:
        """Raise :class:`NotAuthorized` unless the evidence holds together (steps 1-3)."""
        lease_id = evidence.lease_id
        opened = self.client.get_logs("DisputeOpened", leaseId=lease_id)
        if not opened or bytes(opened[-1]["evidenceHash"]) != evidence.hash():
            raise NotAuthorized(f"the evidence does not match the dispute opened on lease {lease_id}")
        lease = self.client.lease(lease_id)
        provider = self.client.provider(lease.provider_id).owner
        receipt = evidence.receipt.receipt
        domain = HeartbeatDomain(self.client.chain_id, self.client.market.address)
        if receipt.lease_id != lease_id or evidence.receipt.signer(domain) != provider:
            raise NotAuthorized(f"the receipt is not signed by lease {lease_id}'s provider {provider}")
        items = dict(evidence.items)
        if (hash_task_keys(list(items)) != receipt.task_keys_hash
                or combine_result_hashes(items) != receipt.results_hash):
            raise NotAuthorized("the listed task hashes are not the ones the receipt signs")
        if items.get(evidence.key) != evidence.delivered_hash:
            raise NotAuthorized("the disputed task is not in the receipt with the stated result hash")
        if hash_result(delivered) != evidence.delivered_hash:
            raise NotAuthorized("the result handed over is not the one the provider signed")
        stated = dict(evidence.input_hashes)
        if set(stated) != set(inputs) or any(hash_result(v) != stated[k] for k, v in inputs.items()):
            raise NotAuthorized("the inputs handed over are not the ones the evidence lists")

    def resolve(self, evidence: Evidence, task, inputs: dict, delivered) -> Verdict:
        """Check, re-run ``task`` on ``inputs``, and resolve the dispute on chain (step 4)."""
        try:
            self.check(evidence, inputs, delivered)
        except NotAuthorized as exc:  # evidence that does not hold together loses the dispute
            tx = self.client.resolve_dispute(evidence.lease_id, False, 0)
            return Verdict(evidence.lease_id, False, 0, f"evidence refused: {exc}", tx.hash)
        recomputed = task(inputs)
        at_fault = not results_match(delivered, recomputed, self.rtol, self.atol)
        slash = self.slash if self.slash is not None else self.client.params()["min_stake"]
        tx = self.client.resolve_dispute(evidence.lease_id, at_fault, slash if at_fault else 0)
        reason = ("the delivered result differs from the task's result on the signed inputs" if at_fault
                  else "the task's result on the signed inputs matches what was delivered")
        return Verdict(evidence.lease_id, at_fault, tx.result, reason, tx.hash)
