"""What a checkout is made of, validated the same way at the gateway, in order and in payment."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator


def luhn_valid(digits: str) -> bool:
    """The Luhn check over a string of decimal digits (any Unicode decimal digit: the log
    redaction masks card numbers however they were written)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def luhn_ok(number: str) -> bool:
    """A card number: ASCII digits only (int() takes "٤", Arabic-Indic, too) and Luhn-valid."""
    return number.isascii() and number.isdigit() and luhn_valid(number)


def _luhn(value: str) -> str:
    if not luhn_ok(value):
        raise ValueError("card number fails the Luhn check")
    return value


NETWORKS: tuple[str, ...] = ("visa", "mastercard", "amex", "discover", "other")


def card_network(number: str) -> str:
    """The card's network, from its leading digits (the issuer identification number's ranges):
    what order records as an order's payment method. `number` is a validated CardNumber."""
    if number.startswith("4"):
        return "visa"
    if number[:2] in ("34", "37"):
        return "amex"
    if "51" <= number[:2] <= "55" or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number.startswith(("6011", "65")) or "644" <= number[:3] <= "649":
        return "discover"
    return "other"


# [0-9], not \d: the schema's regex engine counts every Unicode digit as \d, and a card written
# in Arabic-Indic digits would pass and miss the decline list (compared as ASCII).
CardNumber = Annotated[str, Field(pattern=r"^[0-9]{12,19}$"), AfterValidator(_luhn)]
Currency = Literal["EUR"]


class LineItem(BaseModel):
    product_id: str = Field(min_length=1, max_length=40)
    quantity: int = Field(ge=1, le=100)


class Cart(BaseModel):
    items: list[LineItem] = Field(min_length=1, max_length=20)
    card_number: CardNumber
    currency: Currency = "EUR"

    @field_validator("items")
    @classmethod
    def _distinct(cls, items: list[LineItem]) -> list[LineItem]:
        if len({i.product_id for i in items}) != len(items):
            raise ValueError("each product may appear once; use quantity")
        return items


# A client's Idempotency-Key (RFC draft "The Idempotency-Key HTTP Header Field"): printable
# ASCII without spaces, so it can be logged and sent on as a header as it is.
IdempotencyKey = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[!-~]+$")]
