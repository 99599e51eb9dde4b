"""Everything that speaks to the chain: contracts, MarketClient, devnet, accounts."""

from .accounts import Signer
from .client import MarketClient, Tx
from .devnet import Devnet, DevnetParams, deploy_market

__all__ = ["Devnet", "DevnetParams", "MarketClient", "Signer", "Tx", "deploy_market"]
