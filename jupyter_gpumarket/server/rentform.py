"""The body of ``POST /gpumarket/leases`` checked field by field into a :class:`RentRequest`.

Every refusal is one :class:`~jupyter_gpumarket.errors.InvalidRequest` naming the
field and what to send instead; nothing reaches the chain before all fields pass.
Missing fields take the same ``gpumarket.*`` defaults as ``%%gpurent``.

>>> request = rent_request({"gpus": 2, "gpu": "A100|H100", "max_price": "2.50", "hours": 0.5}, decimals=6)
>>> request.gpus, request.gpu, request.max_price, request.hours
(2, 'A100|H100', 2500000, 0.5)
>>> rent_request({"gpus": 0}, decimals=6)
Traceback (most recent call last):
...
jupyter_gpumarket.errors.InvalidRequest: gpus is 0; ask for at least 1 GPU
"""

from __future__ import annotations

import json

from ..errors import InvalidRequest
from ..session import RentRequest, config
from ..spec import Money

#: Field -> (the gpumarket.* config key of its default, what a good value looks like).
FIELDS = {
    "gpus": ("gpus", "a whole number of GPUs such as 1"),
    "gpu": ("gpu", 'a pattern over GPU models such as "A100|H100" ("" takes any)'),
    "min_vram": ("min-vram", "a whole number of GiB such as 40"),
    "region": ("region", 'a region name, or "" for any'),
    "max_price": ("max-price", 'a price per GPU-hour in tokens, as a string such as "3.00"'),
    "hours": ("hours", "a number of hours above 0 such as 1 or 0.5"),
    "budget": (None, 'the most this lease may spend in tokens, as a string such as "5.00"'),
    "window": ("window", "a whole number of seconds such as 3"),
    "select": ("select", '"cost" or "price"'),
    "attest": ("attest", "true or false"),
}


def rent_request(body: dict, decimals: int) -> RentRequest:
    """Check a decoded JSON body and build the request; money parsed exactly into base units."""
    if not isinstance(body, dict):
        raise InvalidRequest('send a JSON object such as {"gpus": 1, "max_price": "3.00", "hours": 1}')
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)}; use only {', '.join(FIELDS)}")
    value = {name: body.get(name, config(key) if key else None) for name, (key, _) in FIELDS.items()}
    gpus = _whole(value["gpus"], "gpus")
    if gpus < 1:
        raise InvalidRequest(f"gpus is {gpus}; ask for at least 1 GPU")
    return RentRequest(
        gpus=gpus,
        gpu=_text(value["gpu"], "gpu"),
        min_vram=_whole(value["min_vram"], "min_vram"),
        region=_text(value["region"], "region"),
        max_price=_tokens(value["max_price"], "max_price", decimals),
        hours=_number(value["hours"], "hours"),
        budget=None if value["budget"] is None else _tokens(value["budget"], "budget", decimals),
        window=_whole(value["window"], "window"),
        select=_text(value["select"], "select"),
        partial=config("partial"),
        attest=_flag(value["attest"], "attest"),
    )


def _refuse(name: str, got) -> InvalidRequest:
    plain = got is None or isinstance(got, (bool, int, float))
    shown = repr(got) if isinstance(got, str) else json.dumps(got) if plain else f"a JSON {type(got).__name__}"
    return InvalidRequest(f"{name} must be {FIELDS[name][1]}, got {shown}")


def _whole(got, name: str) -> int:
    if isinstance(got, bool) or not isinstance(got, int):
        raise _refuse(name, got)
    return got


def _number(got, name: str) -> float:
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise _refuse(name, got)
    return float(got)


def _text(got, name: str) -> str:
    if not isinstance(got, str):
        raise _refuse(name, got)
    return got


def _flag(got, name: str) -> bool:
    if not isinstance(got, bool):
        raise _refuse(name, got)
    return got


def _tokens(got, name: str, decimals: int) -> int:
    """A token amount sent as a string; numbers are refused (JSON numbers are floats in JS)."""
    if not isinstance(got, str):
        raise _refuse(name, got)
    try:
        return Money.parse(got, decimals).amount
    except InvalidRequest as exc:
        raise InvalidRequest(f"{name}: {exc}") from None
