"""What a request costs in money: the price table (PRICES_FILE, TOML) and DEFAULT_PRICE.

The file, next to UPSTREAMS_FILE's style:

    [models."gpt-4o-mini"]
    input = 0.15          # USD per million input (prompt) tokens
    output = 0.60         # USD per million output (completion) tokens
    cached_input = 0.075  # optional: USD per million input tokens the upstream had cached

    [models."dall-e-3"]
    images = { "1024x1024" = 0.04, "1024x1792" = 0.08 }   # USD per image, by size

Rules: prices are exact decimals (TOML numbers read as written, never through a binary
float), at least 0; a cost is rounded up to a whole nanodollar (1e-9 USD), the unit budgets
count in, so an amount is never under-counted. A model without a price costs nothing known:
its tokens are counted, and a request for it under a money budget is refused unless
DEFAULT_PRICE (`input/output`, USD per million tokens, e.g. `1/2`) gives one. Every mistake
in the file stops start-up naming the model and the key.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType

NANO = 10**9  # nanodollars per dollar
_SIZE = re.compile(r"\d{2,5}x\d{2,5}")


class PriceError(ValueError):
    """PRICES_FILE or DEFAULT_PRICE holds something that is not a price."""


@dataclass(frozen=True)
class Price:
    input: Decimal = Decimal(0)  # USD per million tokens
    output: Decimal = Decimal(0)
    cached_input: Decimal | None = None
    images: Mapping[str, Decimal] = field(default_factory=dict)  # USD per image, by size

    def tokens(self, prompt: int, completion: int, cached: int = 0) -> int:
        """Nanodollars for these tokens (`cached`: the part of `prompt` read from cache)."""
        cached = min(max(cached, 0), prompt) if self.cached_input is not None else 0
        dollars = ((prompt - cached) * self.input + cached * (self.cached_input or 0)
                   + completion * self.output) / 1_000_000
        return _nano(dollars)

    def image(self, size: str | None, count: int) -> int | None:
        """Nanodollars for `count` images of `size`, or None when that size has no price (the
        dearest size is used when no size was named)."""
        if not self.images:
            return None
        price = self.images.get(size) if size else max(self.images.values())
        return None if price is None else _nano(price * count)


def _nano(dollars: Decimal) -> int:
    return int(math.ceil(dollars * NANO))


def dollars(nano: int | None) -> str | None:
    """Nanodollars as a dollar amount for a person: six decimals."""
    return None if nano is None else f"{Decimal(nano) / NANO:.6f}"


def parse_dollars(value: object, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise PriceError(f"{what} must be a number of US dollars")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise PriceError(f"{what} must be a number of US dollars") from None
    if not amount.is_finite() or amount < 0:
        raise PriceError(f"{what} must be a number of US dollars, at least 0")
    return amount


def default_price(value: str) -> Price | None:
    """DEFAULT_PRICE: `input/output` in USD per million tokens, or empty for none."""
    value = value.strip()
    if not value:
        return None
    parts = value.split("/")
    if len(parts) != 2:
        raise PriceError("must be input/output in USD per million tokens, such as 1/2")
    return Price(parse_dollars(parts[0], "the input price"),
                 parse_dollars(parts[1], "the output price"))


_KEYS = {"input", "output", "cached_input", "images"}


def load_prices(path: Path) -> Mapping[str, Price]:
    """PRICES_FILE's table: model -> Price."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except OSError as exc:
        raise PriceError(f"cannot be read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PriceError(f"is not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"models"})
    if extra:
        raise PriceError(f"unknown table {extra[0]!r} (the file holds [models.\"<name>\"])")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise PriceError("[models] must be a table of models")
    prices = {}
    for model, entry in models.items():
        where = f"model {model!r}"
        if not isinstance(entry, dict):
            raise PriceError(f"{where} must be a table")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise PriceError(f"{where}: unknown key {unknown[0]!r} (known: "
                             f"{', '.join(sorted(_KEYS))})")
        images = entry.get("images", {})
        if not isinstance(images, dict) or not all(_SIZE.fullmatch(str(k)) for k in images):
            raise PriceError(f"{where}: 'images' maps sizes such as \"1024x1024\" to a price")
        if not entry.keys() & {"input", "output", "images"}:
            raise PriceError(f"{where} has no price (input, output or images)")
        prices[model] = Price(
            parse_dollars(entry.get("input", 0), f"{where}: input"),
            parse_dollars(entry.get("output", 0), f"{where}: output"),
            parse_dollars(entry["cached_input"], f"{where}: cached_input")
            if "cached_input" in entry else None,
            MappingProxyType({size: parse_dollars(v, f"{where}: images.{size}")
                              for size, v in images.items()}))
    return MappingProxyType(prices)
