"""One set of redaction rules for everything that leaves a process: log lines and spans.

`redact_text` masks secrets inside free text (messages, exception strings, tracebacks, URLs);
`redact_any` turns any value (str, bytes, numbers, containers, exceptions, models, objects) into
a JSON-ready value with the same rules applied, keys included; `is_secret_key` names the fields
whose value is dropped whole. `services.kit.logs` applies them to every log line and
`services.kit.tracing` to every span before any exporter sees it (docs/telemetry.md).

What is masked:
- card numbers (PANs): runs of 12-19 digits, ASCII or other Unicode digits, optionally split by
  spaces, dashes, `+` or `%20`, that pass the Luhn check -> ``[REDACTED pan ****1234]`` (the last
  4 digits at most). Kept: runs glued to letters inside a hex token (trace/span ids, hashes, order
  ids), digit runs inside a UUID, and contiguous 13/16/19-digit runs that read as a Unix time in
  ms/µs/ns between 2001 and 2035 (timestamps are not card numbers).
- free-text credentials: ``password=…``, ``passwd:``, ``pwd=``, ``secret=``, ``token=``,
  ``api_key=``, ``X-API-Key: …``, ``cvv=`` (any prefix: ``client_secret``, ``access_token``;
  ``=``, ``:`` or URL-encoded ``%3D``/``%3A``; quoted or not); ``Authorization: …`` and
  ``Cookie: …`` (the whole value);
  ``Bearer <anything>`` and ``Basic <credentials>`` of any length; JWTs (``eyJ….….…``); pydantic's
  ``input_value=…`` in validation errors (it echoes whatever was sent, a password included).
- fields whose key names a secret (`is_secret_key`): password, secret, token, authorization,
  cookie, api key, card number, cvc/cvv, pan…: the value is replaced whatever its type.

Cost: this runs on every log line. Short strings, plain identifiers and strings without digits,
`=`, `:` or the few trigger words skip every regex; a regex runs only when its cheap
precondition holds (12+ digits present, a separator present, ...).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import re
import uuid
from collections.abc import Mapping
from typing import Any

from .checkout import luhn_valid

REDACTED = "[REDACTED]"
MAX_DEPTH = 24  # deeper (or cyclic) containers are cut here, not recursed into forever

# --- keys ----------------------------------------------------------------------------------

# Keys whose values never reach a log line or a span (card_last4 is fine: it is not a secret).
_SECRET_KEYS = re.compile(
    r"pass(word|wd|phrase)?$|^pwd$|secret|token|authori[sz]ation|cookie|api[_-]?key"
    r"|private[_-]?key|credential|card_?num(ber)?$|^card$|cvc|cvv|^pan$",
    re.I,
)
# Key -> (the key with text rules applied, whether it names a secret): a service logs a
# small, fixed set of keys, so each is looked at once.
_key_cache: dict[str, tuple[str, bool]] = {}


def redact_key(key: str) -> tuple[str, bool]:
    hit = _key_cache.get(key)
    if hit is None:
        hit = (redact_text(key), _SECRET_KEYS.search(key) is not None)
        if len(_key_cache) < 4096 and len(key) <= 64:
            _key_cache[key] = hit
    return hit


def is_secret_key(key: str) -> bool:
    return redact_key(key)[1]


# --- card numbers --------------------------------------------------------------------------

# A candidate: 12-19 digits, single separators allowed between them, not inside a longer run.
# It may start right after a URL-encoded space (`%20`) but not inside another %-escape.
_SEP = r"(?:[ +-]|%20)"
_PAN = re.compile(rf"(?:(?<=%20)|(?<![\d%]))\d(?:{_SEP}?\d){{11,18}}(?!\d)")
_SPLIT = re.compile(_SEP)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX_DIGITS = "0123456789abcdefABCDEF"
_HEX = frozenset(_HEX_DIGITS)
# Unix time 2001-01-01 .. 2035-01-01 in ms, µs and ns (13, 16 and 19 digits).
_EPOCH = tuple((978_307_200 * f, 2_051_222_400 * f) for f in (10**3, 10**6, 10**9))


def _is_epoch(digits: str) -> bool:
    if len(digits) not in (13, 16, 19):
        return False
    value = int(digits)
    return any(lo <= value < hi for lo, hi in _EPOCH)


def _pan_mask(digits: str) -> str:
    return f"[REDACTED pan ****{digits[-4:]}]"


def _mask_digit_run(digits: str) -> str | None:
    """The mask for a bare run of 12-19 digits that is a card number, else None."""
    if luhn_valid(digits) and not _is_epoch(digits):
        return _pan_mask(digits)
    return None


def _in_hex_token(s: str, start: int, end: int) -> bool:
    """The match is glued to letters of an alphanumeric token made of hex digits only."""
    glued = (start > 0 and s[start - 1].isalpha()) or (end < len(s) and s[end].isalpha())
    if not glued:
        return False
    lo, hi = start, end
    while lo > 0 and s[lo - 1].isalnum():
        lo -= 1
    while hi < len(s) and s[hi].isalnum():
        hi += 1
    return all(c in _HEX for c in s[lo:hi])


def _in_uuid(s: str, start: int, end: int) -> bool:
    if "-" not in s:
        return False
    window_start = max(0, start - 36)
    for m in _UUID.finditer(s, window_start, min(len(s), end + 36)):
        if m.start() <= start and end <= m.end():
            return True
    return False


def _pan_sub(m: re.Match) -> str:
    text = m.group()
    s, start, end = m.string, m.start(), m.end()
    if _in_hex_token(s, start, end):
        return text  # a hex id (trace id, hash) keeps its digits; "card4111…" does not
    groups = _SPLIT.split(text)
    if len(groups) == 1:
        return _mask_digit_run(text) or text
    if _in_uuid(s, start, end):
        return text
    # Separated groups: the whole run, or any run of consecutive groups of 12-19 digits
    # ("qty 2 4111 1111 1111 1111" must not hide the card behind a leading number).
    n = len(groups)
    for size in range(n, 0, -1):
        for i in range(n - size + 1):
            digits = "".join(groups[i : i + size])
            if 12 <= len(digits) <= 19 and luhn_valid(digits):
                return _pan_mask(digits)
    return text


# --- credentials in free text --------------------------------------------------------------

_QUOTED_OR_BARE = r"""("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[^\s&,;'"}\])]+)"""
# `<key><sep><value>`: the key names a credential; any prefix counts (client_secret,
# access_token, x-api-key, db.password), so the match starts at the word itself.
_KEY_VALUE = re.compile(
    r"(?i)((?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key"
    r"|private[_-]?key|credentials?|cvv2?|cvc2?)[\"']?\s*(?:[=:]|%3[da])\s*)" + _QUOTED_OR_BARE
)
# An Authorization or Cookie header anywhere in text: its whole value, whatever the scheme.
_AUTH_HEADER = re.compile(
    r"(?i)(\b(?:(?:proxy-)?authori[sz]ation|(?:set-)?cookie)[\"']?\s*(?:[=:]|%3[da])\s*)"
    r"(\"[^\"\n]*\"|'[^'\n]*'|[^\r\n,;'\"}]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer)(?:\s+|%20|\+)[^\s,;'\"&)}\]]+")
_BASIC = re.compile(r"\b(Basic|BASIC)(?:\s+|%20|\+)[A-Za-z0-9+/=._~%-]+")
_JWT = re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]*")
# pydantic: "... [type=string_too_long, input_value='<what was sent>', input_type=str]"
_INPUT_VALUE = re.compile(r"\binput_value=[^\n]*, input_type=")


def _key_value_sub(m: re.Match) -> str:
    return m.group(1) + REDACTED


def _scheme_sub(m: re.Match) -> str:
    return m.group(1) + " " + REDACTED


def redact_text(value: str) -> str:
    """Mask card numbers and credentials inside free text (messages, exceptions, URLs)."""
    n = len(value)
    if n < 5:
        return value
    if value.isalnum():
        return _redact_token(value)
    if value in _clean_text:
        return value
    out = _redact_free_text(value)
    if out == value and n <= 200:
        # Clean short texts repeat (hosts, routes, user agents, event names): remember them.
        # What held a secret is never kept here.
        if len(_clean_text) >= 4096:
            _clean_text.clear()
        _clean_text.add(value)
    return out


_clean_text: set[str] = set()


def _redact_free_text(value: str) -> str:
    n = len(value)
    if "_" in value and value.replace("_", "0").isalnum():
        # An identifier such as ord_1a2b…: its parts are tokens ("_" never splits a PAN).
        parts = value.split("_")
        clean = [_redact_token(p) for p in parts]
        return value if clean == parts else "_".join(clean)
    low = value.lower()
    # Schemes first: "token: Bearer abc" must lose "abc", not only "Bearer".
    if "bearer" in low:
        value = _BEARER.sub(_scheme_sub, value)
    if "Basic" in value or "BASIC" in value:
        value = _BASIC.sub(_scheme_sub, value)
    if "=" in value or ":" in value or "%3" in value:
        if "authori" in low or "cookie" in low:
            value = _AUTH_HEADER.sub(_key_value_sub, value)
        if (
            "pass" in low
            or "pwd" in low
            or "secret" in low
            or "token" in low
            or "key" in low
            or "credential" in low
            or "cvv" in low
            or "cvc" in low
        ):
            value = _KEY_VALUE.sub(_key_value_sub, value)
        if "input_value=" in value:
            value = _INPUT_VALUE.sub("input_value=" + REDACTED + ", input_type=", value)
    if "eyJ" in value:
        value = _JWT.sub(REDACTED, value)
    if n >= 12 and _digit_count(value) >= 12:
        value = _PAN.sub(_pan_sub, value)
    return value


def _redact_token(value: str) -> str:
    """A string of letters and digits only: no separator, so no credential. A PAN is the whole
    string, or a digit run glued to letters that do not make a hex id ("card4111…" is masked, a
    trace id is not)."""
    n = len(value)
    if value.isdecimal():
        return (_mask_digit_run(value) or value) if 12 <= n <= 19 else value
    if n < 13 or not value.strip(_HEX_DIGITS) or _digit_count(value) < 12:
        return value
    return _PAN.sub(_pan_sub, value)


_ASCII_DIGITS = b"0123456789"
_ANY_DIGIT = re.compile(r"\d")


def _digit_count(value: str) -> int:
    """Cheap pre-check for the PAN regex: how many digits the text holds (12 at least for one)."""
    if value.isascii():
        return len(value) - len(value.encode("ascii").translate(None, _ASCII_DIGITS))
    return len(_ANY_DIGIT.findall(value))  # other scripts' digits count too


# --- any value -----------------------------------------------------------------------------


def redact_int(value: int) -> int | str:
    """The int itself, or a mask when its 12-19 digits are a card number."""
    if -(10**11) < value < 10**11 or value >= 10**19 or value <= -(10**19):
        return value
    return _mask_digit_run(str(abs(value))) or value


_NATIVE_SAFE = (datetime.date, datetime.time, uuid.UUID)


def _is_validation_error_item(d: Mapping) -> bool:
    return "input" in d and "loc" in d and "type" in d


def redact_mapping(obj: Mapping, depth: int = 0) -> dict:
    out = {}
    pydantic_item = _is_validation_error_item(obj)
    for k, v in obj.items():
        key, secret = redact_key(k if isinstance(k, str) else str(k))
        if secret or (pydantic_item and key == "input"):
            out[key] = REDACTED
        else:
            out[key] = redact_any(v, depth + 1)
    return out


def redact_any(obj: Any, depth: int = 0) -> Any:
    """A JSON-ready copy of `obj` with every rule applied: the one function for any value."""
    if obj is None or obj is True or obj is False:
        return obj
    t = type(obj)
    if t is str:
        return redact_text(obj)
    if t is int:
        return redact_int(obj)
    if t is float:
        if (obj >= 1e11 or obj <= -1e11) and obj.is_integer() and abs(obj) < 1e19:
            masked = redact_int(int(obj))
            return masked if isinstance(masked, str) else obj
        return obj
    if depth >= MAX_DEPTH:
        return "[TRUNCATED]"
    if isinstance(obj, Mapping):
        return redact_mapping(obj, depth)
    if isinstance(obj, list | tuple | set | frozenset):
        return [redact_any(v, depth + 1) for v in obj]
    if isinstance(obj, bytes | bytearray | memoryview):
        return redact_text(bytes(obj).decode("utf-8", "backslashreplace"))
    if isinstance(obj, enum.Enum):
        return redact_any(obj.value, depth + 1)
    if isinstance(obj, _NATIVE_SAFE):
        return obj  # orjson writes these itself (ISO 8601, canonical UUID): nothing to mask
    if isinstance(obj, str):  # str subclasses
        return redact_text(str(obj))
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return redact_int(int(obj))
    if isinstance(obj, float):
        return redact_any(float(obj), depth)
    if isinstance(obj, BaseException):
        return redact_text(f"{type(obj).__name__}: {obj}")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name, None) for f in dataclasses.fields(obj)}
        return redact_mapping(fields, depth)
    dump = getattr(obj, "model_dump", None)  # pydantic models: by field, so keys count
    if callable(dump) and not isinstance(obj, type):
        try:
            data = dump(mode="json")
        except Exception:
            data = None
        if isinstance(data, Mapping):
            return redact_mapping(data, depth)
    try:
        text = str(obj)
    except Exception:
        text = f"<unprintable {t.__name__}>"
    return redact_text(text)
