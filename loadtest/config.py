"""Load generator settings, read from the environment only.

Kept free of Locust imports so that tests (and tools such as the drill runner) can parse the
same settings without importing Locust, whose import monkey-patches the whole process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_USER_POOL = "shopper[01-50]:triagelab,alice:wonderland,bob:builder"

# Test cards the payment service approves, one per card network, and the share of approved
# checkouts paying with each (a real shop's mix): a fault on one card range hits only its share.
APPROVED_CARDS = {
    "4242424242424242": 0.58,  # visa
    "5555555555554444": 0.25,  # mastercard
    "378282246310005": 0.09,  # amex
    "6011111111111117": 0.08,  # discover
}
# Test cards the payment service declines, with the reason it gives.
DECLINED_CARDS = ("4000000000000002", "4000000000009995")  # card declined, insufficient funds

_RANGE = re.compile(r"^(?P<prefix>[^\[]*)\[(?P<lo>\d+)-(?P<hi>\d+)\](?P<suffix>[^\[\]]*)$")


class SettingsError(ValueError):
    """A LOCUST_* variable holds a value the load generator cannot use."""


def parse_user_pool(spec: str) -> list[tuple[str, str]]:
    """Parse ``name:password`` entries; ``shopper[01-50]:pw`` expands to 50 users.

    The zero padding of the lower bound is kept (``[01-50]`` gives ``shopper01``), so the
    pool matches the seeded demo users exactly.
    """
    users: list[tuple[str, str]] = []
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, password = entry.partition(":")
        if not sep or not name or not password:
            raise SettingsError(f"user pool entry {entry!r} is not name:password")
        match = _RANGE.match(name)
        if match is None:
            users.append((name, password))
            continue
        lo, hi = match["lo"], match["hi"]
        if int(lo) > int(hi):
            raise SettingsError(f"user pool range {name!r} is empty")
        if int(hi) - int(lo) >= 10_000:
            raise SettingsError(f"user pool range {name!r} is too large")
        width = len(lo)
        users.extend(
            (f"{match['prefix']}{i:0{width}d}{match['suffix']}", password)
            for i in range(int(lo), int(hi) + 1)
        )
    if not users:
        raise SettingsError("user pool is empty")
    return users


def _float(env: Mapping[str, str], key: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{key}={raw!r} is not a number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{key}={raw!r} must be within {lo}..{hi}")
    return value


@dataclass(frozen=True)
class LoadSettings:
    """What a shopper does and how fast; every field has a LOCUST_* variable (docs/loadtest.md)."""

    users: tuple[tuple[str, str], ...]
    decline_rate: float = 0.03
    wait_min: float = 1.0
    wait_max: float = 5.0
    max_items: int = 3
    currency: str = "EUR"
    timeout: float = 10.0
    checkout_retries: int = 2
    checkouts_file: str = ""  # each checkout answered 201, a JSON line (the drill's data check)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoadSettings:
        env = os.environ if env is None else env
        wait_min = _float(env, "LOCUST_WAIT_MIN", 1.0, 0.0, 3600.0)
        wait_max = _float(env, "LOCUST_WAIT_MAX", max(5.0, wait_min), 0.0, 3600.0)
        if wait_max < wait_min:
            raise SettingsError(f"LOCUST_WAIT_MAX={wait_max} is below LOCUST_WAIT_MIN={wait_min}")
        return cls(
            users=tuple(parse_user_pool(env.get("LOCUST_USER_POOL") or DEFAULT_USER_POOL)),
            decline_rate=_float(env, "LOCUST_DECLINE_RATE", 0.03, 0.0, 1.0),
            wait_min=wait_min,
            wait_max=wait_max,
            max_items=int(_float(env, "LOCUST_MAX_ITEMS", 3, 1, 20)),
            currency=(env.get("LOCUST_CURRENCY") or "EUR").strip().upper(),
            timeout=_float(env, "LOCUST_TIMEOUT", 10.0, 0.1, 600.0),
            checkout_retries=int(_float(env, "LOCUST_CHECKOUT_RETRIES", 2, 0, 10)),
            checkouts_file=env.get("LOCUST_CHECKOUTS_FILE", "").strip(),
        )
