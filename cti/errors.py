"""The project's one exception hierarchy.

Every error raised on purpose by ``cti`` derives from :class:`CtiError`, and its
message names the input that was wrong and what was expected instead.
"""

from __future__ import annotations


class CtiError(Exception):
    """Base class of every error raised by the connector."""


class ConfigError(CtiError):
    """A configuration value is missing or invalid."""


# --- AMI -------------------------------------------------------------------


class AmiError(CtiError):
    """Something went wrong talking to the Asterisk Manager Interface."""


class AmiProtocolError(AmiError):
    """Bytes or an action that do not follow the AMI wire format."""


class AmiAuthError(AmiError):
    """Asterisk refused the login (wrong user or secret, or not permitted)."""


class AmiConnectionLost(AmiError):
    """The AMI link dropped (or Asterisk shut down) while an action was pending."""


class AmiTimeout(AmiError):
    """An action got no response within its timeout."""


class AmiActionError(AmiError):
    """Asterisk answered an action with ``Response: Error``.

    The full response message is kept in :attr:`response`.
    """

    def __init__(self, message: str, response: object | None = None) -> None:
        super().__init__(message)
        self.response = response


# --- FastAGI ---------------------------------------------------------------


class AgiError(CtiError):
    """Something went wrong in a FastAGI session."""


class AgiProtocolError(AgiError):
    """A FastAGI request or reply that does not follow the protocol."""


class AgiHangup(AgiError):
    """The channel hung up: Asterisk sent ``HANGUP``, ``511`` or ``(hangup)``."""


# --- CRM -------------------------------------------------------------------


class CrmError(CtiError):
    """The CRM backend failed or answered something unusable."""


class CrmUnavailable(CrmError):
    """The CRM is down, or the circuit breaker is open."""


class CrmTimeout(CrmError):
    """The CRM did not answer within the time budget."""


class ImportRowError(CtiError):
    """One row of an import file is invalid; the message names row and field."""


# --- Pops ------------------------------------------------------------------


class PopProtocolError(CtiError):
    """A websocket client sent a frame that is not a valid agent message."""
