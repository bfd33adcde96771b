"""Phone numbers: turn what Asterisk sends or a human typed into one comparable form.

Theory of operation. Both sides of a lookup go through :func:`normalise`: the caller
ID from the PBX and every number stored in the CRM. A number ends up as one of

* ``e164``  -- ``+8613800138000``: parsed with the tenant's (or the contact's) region;
* ``short`` -- ``12345``: an extension or short code, compared digit for digit and
  never turned into E.164 (``12345`` must not match ``+4912345``);
* ``none``  -- no usable number: empty, withheld (``anonymous``, ``<unknown>`` ...),
  text (``INTERNATIONAL``, ``n/a``) or too short. No CRM query is made for it.

Matching uses ``phonenumbers.is_possible_number`` (a length check), not
``is_valid_number``: the reserved ``555-01xx`` test numbers are invalid but real
PBXs send them. The region is configured, never guessed: ``13800138000`` read with
region US is ``+13800138000``, not a Chinese mobile.

Outbound, :func:`format_for_dial` renders an E.164 number the way the PBX dial plan
expects, using the PBX's region (never an agent's or a contact's country).

Pure module: no I/O. :func:`normalise` never raises on a bad number; it raises
:class:`~cti.errors.ConfigError` only for an unknown region (a configuration bug).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

import phonenumbers

from cti.errors import ConfigError, CtiError

Kind = Literal["e164", "short", "none"]
DialStyle = Literal["e164", "national"]

# National numbers are longer than this anywhere the connector is likely to run; up
# to this many digits (without a leading +) a number is an extension or short code.
SHORT_MAX_DIGITS = 6

# Spellings of "no number" seen from Asterisk, PRI/DAHDI gateways and SIP trunks
# (case 15). Compared after lower-casing and removing <>, quotes and whitespace.
WITHHELD = frozenset({
    "", "unknown", "anonymous", "restricted", "private", "unavailable", "withheld",
    "unknowncallerid", "blocked", "none", "null", "nocallerid", "asterisk",
})

_SEPARATORS = re.compile(r"[\s\-./()\[\]\u00a0\u2010-\u2015]")
_DIALABLE = re.compile(r"\+?[0-9]+")


class DialNumberError(CtiError, ValueError):
    """A number handed to :func:`format_for_dial` is not a dialable E.164/short number."""


@dataclass(frozen=True, slots=True)
class Number:
    """The result of :func:`normalise`.

    ``value`` is the comparable form (``+E164`` or the short digits), ``None`` when
    ``kind`` is ``"none"``; ``reason`` then says why, for logs and the pop.
    """

    kind: Kind
    value: str | None
    raw: str | None
    reason: str | None = None

    @property
    def usable(self) -> bool:
        """True when a CRM lookup makes sense for this number."""
        return self.kind != "none"


def _bare(text: str) -> str:
    return text.strip().strip("<>\"'").replace(" ", "").lower()


def is_withheld(text: str) -> bool:
    """True for a spelling of "no caller id" in :data:`WITHHELD` (``<unknown>``, ``Anonymous``).

    The one test for withheld numbers and placeholder names; :func:`normalise`,
    the call tracker and the pop book all use it.
    """
    return _bare(text) in WITHHELD


def _none(raw: str | None, reason: str) -> Number:
    return Number("none", None, raw, reason)


def check_region(region: str) -> str:
    """Return ``region`` upper-cased; raise :class:`ConfigError` if phonenumbers lacks it."""
    code = (region or "").upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"phone region {region!r} is not an ISO 3166 region code "
                          "phonenumbers knows (expected e.g. 'US', 'DE', 'CN')")
    return code


def _parse_possible(text: str, region: str | None) -> str | None:
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalise(raw: str | None, region: str, min_digits: int = 3,
              short_max_digits: int = SHORT_MAX_DIGITS) -> Number:
    """Normalise a caller ID or a stored CRM number for matching.

    ``region`` is the ISO 3166 code national numbers belong to (the tenant's home,
    or the contact's own country for a stored number). Numbers with fewer than
    ``min_digits`` digits are unusable; up to ``short_max_digits`` digits (and no
    leading ``+``) they are short numbers. Never raises for a bad ``raw``; raises
    :class:`ConfigError` for an unknown ``region``.
    """
    region = check_region(region)
    if raw is None:
        return _none(raw, "empty")

    # NFKC folds full-width digits and brackets (typed with CJK input methods,
    # "１３８００１３８０００") into ASCII; the result is still checked below.
    text = unicodedata.normalize("NFKC", raw)
    word = _bare(text)
    if word in WITHHELD:
        return _none(raw, "withheld" if word else "empty")

    compact = _SEPARATORS.sub("", text.strip())
    if not _DIALABLE.fullmatch(compact):
        return _none(raw, "not a number")

    digits = compact.lstrip("+")
    if len(digits) < min_digits:
        return _none(raw, "too short")
    if not digits.strip("0"):
        return _none(raw, "all zeros")

    if compact.startswith("+"):
        e164 = _parse_possible(compact, None)
        return Number("e164", e164, raw) if e164 else _none(raw, "impossible number")

    if len(digits) <= short_max_digits:
        return Number("short", digits, raw)

    e164 = _parse_possible(digits, region)
    if e164 is None and digits.startswith("00"):
        # "00" is the ITU international prefix; regions that use another one
        # (011 in NANP) cannot have a national number starting with 00 anyway.
        e164 = _parse_possible("+" + digits[2:], None)
    return Number("e164", e164, raw) if e164 else _none(raw, f"impossible number for {region}")


def format_for_dial(number: str, style: DialStyle, pbx_region: str) -> str:
    """Render a normalised number for an Originate, as the PBX dial plan expects it.

    ``style="e164"`` returns ``+<digits>``; ``"national"`` returns digits as dialled
    from a phone in ``pbx_region`` (national form at home, the PBX country's
    international prefix otherwise: US PBX, Turkish number -> ``011902160000000``).
    Short numbers are returned unchanged. Raises :class:`DialNumberError` for a value
    that is neither, :class:`ConfigError` for an unknown style or region.
    """
    pbx_region = check_region(pbx_region)
    if style not in ("e164", "national"):
        raise ConfigError(f"dial style {style!r} is not one of 'e164', 'national'")

    text = (number or "").strip()
    if text.isascii() and text.isdigit() and len(text) <= SHORT_MAX_DIGITS:
        return text
    if not text.startswith("+"):
        raise DialNumberError(f"number {text!r} is not normalised: expected +E.164 or a short "
                              "number (run it through cti.crm.phone.normalise first)")
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        raise DialNumberError(f"number {text!r} is not E.164: {exc}") from None
    if not phonenumbers.is_possible_number(parsed):
        raise DialNumberError(f"number {text!r} has an impossible length for its country")

    if style == "e164":
        return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    dialled = phonenumbers.format_out_of_country_calling_number(parsed, pbx_region)
    return re.sub(r"[^\d+]", "", dialled)
