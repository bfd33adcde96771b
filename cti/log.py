"""Logging: structlog over the standard library, with masking built in.

Every module logs through ``get_logger(__name__)``. Two rules hold for every
line at INFO and above, whatever the caller passed:

* phone numbers are masked except their last 4 digits (keys in
  :data:`NUMBER_KEYS`, and digit runs of 7+ inside the event text and ``error=``);
* secrets never appear (keys in :data:`SECRET_KEYS` are replaced).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

NUMBER_KEYS = frozenset({"number", "caller", "caller_num", "callerid", "phone", "e164",
                         "dialed", "exten", "to", "from_number"})
SECRET_KEYS = frozenset({"secret", "password", "token", "key", "authorization"})
# free text that may quote a number (an exception about a lookup): digit runs masked
_TEXT_KEYS = frozenset({"event", "error"})
_DIGITS = re.compile(r"\+?\d[\d\- ()]{5,}\d")  # no dots: IPs, versions, Uniqueids stay


def mask_number(number: str | None) -> str:
    """``+15551230001`` -> ``*******0001``; short or empty values pass through."""
    if not number:
        return str(number)
    digits = sum(c.isdigit() for c in number)
    if digits <= 4:
        return number
    keep = 4
    out = []
    for c in reversed(number):
        if c.isdigit() and keep > 0:
            out.append(c)
            keep -= 1
        elif c.isdigit() or c == "+":
            out.append("*")
        else:
            out.append(c)
    return "".join(reversed(out))


def mask_text(text: str) -> str:
    """Mask every phone-number-looking run inside free text."""
    return _DIGITS.sub(lambda m: mask_number(m.group(0)), text)


def _scrub(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    level = event.get("level", method)
    debug = level == "debug"
    for key, value in list(event.items()):
        low = key.lower()
        if low in SECRET_KEYS:
            event[key] = "***"
        elif debug:
            continue
        elif low in NUMBER_KEYS and isinstance(value, str):
            event[key] = mask_number(value)
        elif low in _TEXT_KEYS and isinstance(value, str):
            event[key] = mask_text(value)
    return event


def setup(level: str = "INFO", json_logs: bool = False) -> None:
    """Configure structlog and the stdlib root logger once, for the daemon."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _scrub,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if json_logs
                     else structlog.dev.ConsoleRenderer(colors=False))
    structlog.configure(
        processors=[*processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        # filtered levels cost one method call: debug lines on hot paths stay cheap
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=processors,
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
