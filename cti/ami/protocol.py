"""AMI wire format: bytes in, messages out; actions in, bytes out. No I/O.

Theory of operation
-------------------
An AMI stream is a banner line (``Asterisk Call Manager/x.y.z``) followed by
messages. A message is a block of ``Key: value`` lines ended by an empty line.
Real servers bend that rule, so :class:`Parser` frames on *bytes* and accepts:

* ``\\r\\n`` or bare ``\\n`` line ends, ``\\r\\n\\n`` terminators and extra blank
  lines between messages (they are skipped, never turned into empty messages);
* a UTF-8 character split across two reads (a block is decoded only once it is
  complete, and invalid bytes become U+FFFD instead of raising);
* the legacy ``Response: Follows`` reply to ``Action: Command``, whose free-text
  body may contain blank lines and ends with ``--END COMMAND--``; its lines are
  exposed as ``Output`` headers, like the modern format;
* lines without a colon (``--END SMS EVENT--``), kept under the empty key;
* a message larger than ``max_message`` bytes: it is dropped with a log line
  and framing resumes at the next terminator.

A :class:`Message` is an ordered multimap. Header names keep their spelling but
are looked up case-insensitively (``Uniqueid`` / ``UniqueID``). Headers are
split out of the block lazily, on first access: the call model looks at the
event name of every message but at the headers of few, and the three most
frequent events (CEL, VarSet, Newexten) are never split at all.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterable, Iterator, Mapping

from cti.errors import AmiProtocolError

log = logging.getLogger(__name__)

BANNER_PREFIX = "Asterisk Call Manager/"
MAX_MESSAGE = 1 << 20  # 1 MiB: a CoreShowChannels item is ~1 KB, a VarSet can be 70 KB

# One line end followed by an empty line: \r\n\r\n, \r\n\n, \n\r\n or \n\n.
_TERMINATOR = re.compile(rb"\r?\n\r?\n")
_TEXT_TERMINATOR = re.compile(r"\r?\n\r?\n")
_END_COMMAND = b"--END COMMAND--"
_FOLLOWS = b"response: follows"
# An incomplete message may sit in the buffer with a partial terminator after it (up
# to 3 bytes) and a stray CR before it: only beyond max_message + this is it too big,
# so a message's fate at the cap does not depend on where the reads were cut.
_SLACK = 4


def _size(part: str) -> int:
    """Wire size of a block the fast path cut, measured as the careful loop does
    (bytes, not characters; a line end it left before the terminator not counted)."""
    return len(part.encode("utf-8", "surrogateescape")) - part.endswith("\n")


class Kind(enum.IntEnum):
    """What a message is. An ``Event:`` header wins over ``Response:``."""

    EVENT = 1
    RESPONSE = 2
    ACTION = 3
    OTHER = 4


class Message:
    """One AMI message: ordered ``(key, value)`` pairs, case-insensitive lookup.

    Build one from wire text with :meth:`from_text` (what the parser does) or
    from pairs with :meth:`from_pairs`. Read it with :meth:`get`,
    :meth:`get_all`, ``msg["Key"]`` or ``"Key" in msg``.
    """

    __slots__ = ("kind", "name", "_text", "_pairs", "_first")

    def __init__(self, kind: Kind, name: str, text: str | None,
                 pairs: list[tuple[str, str]] | None = None) -> None:
        self.kind = kind
        self.name = name
        self._text = text
        self._pairs = pairs
        self._first: dict[str, str] | None = None

    # -- construction ------------------------------------------------------

    @classmethod
    def from_text(cls, text: str) -> Message:
        """Classify one decoded message block; headers are split later."""
        if text.startswith("Event: "):
            end = text.find("\n")
            name = text[7:end] if end >= 0 else text[7:]
            return cls(Kind.EVENT, name.rstrip("\r"), text)
        msg = cls(Kind.OTHER, "", text)
        msg._classify()
        return msg

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Message:
        """Build a message from ``(key, value)`` pairs (tests, simulator)."""
        msg = cls(Kind.OTHER, "", None, list(pairs))
        msg._classify()
        return msg

    def _classify(self) -> None:
        first = self._index()
        if "event" in first:
            self.kind, self.name = Kind.EVENT, first["event"]
        elif "response" in first:
            self.kind, self.name = Kind.RESPONSE, first["response"]
        elif "action" in first:
            self.kind, self.name = Kind.ACTION, first["action"]
        else:
            self.kind, self.name = Kind.OTHER, ""

    # -- access ------------------------------------------------------------

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """All headers in wire order, repeats included, original spelling."""
        if self._pairs is None:
            self._pairs, self._first = _split_headers(self._text or "")
        return self._pairs

    def _index(self) -> dict[str, str]:
        if self._first is None:
            if self._pairs is None:
                self._pairs, self._first = _split_headers(self._text or "")
            else:
                first: dict[str, str] = {}
                for key, value in self._pairs:
                    first.setdefault(key.lower(), value)
                self._first = first
        return self._first

    def get(self, key: str, default: str | None = None) -> str | None:
        """The *first* value of ``key`` (any case), or ``default``."""
        return self._index().get(key.lower(), default)

    def get_all(self, key: str) -> list[str]:
        """Every value of ``key`` (any case), in wire order."""
        key = key.lower()
        return [v for k, v in self.pairs if k.lower() == key]

    def __getitem__(self, key: str) -> str:
        value = self._index().get(key.lower())
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._index()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    @property
    def output(self) -> list[str]:
        """Command output lines, for both the legacy and the modern format."""
        return self.get_all("Output")

    def to_text(self) -> str:
        return "".join(f"{k}: {v}\r\n" if k else f"{v}\r\n" for k, v in self.pairs) + "\r\n"

    def __repr__(self) -> str:
        return f"<Message {self.kind.name} {self.name!r} {self.pairs!r}>"


def _split_headers(text: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Headers in order, and the first value of each lower-cased key."""
    pairs: list[tuple[str, str]] = []
    first: dict[str, str] = {}
    append = pairs.append
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    for line in text.split("\n"):
        if not line:
            continue
        key, sep, value = line.partition(": ")
        if not sep or ":" in key:  # "Key:value", "Key:" or no colon at all
            colon = line.find(":")
            if colon <= 0:
                append(("", line.rstrip("\r")))  # e.g. "--END SMS EVENT--": kept, not fatal
                continue
            key, value = line[:colon], line[colon + 1:]
            if value.startswith(" "):
                value = value[1:]
        value = value[:-1] if value.endswith("\r") else value
        append((key, value))
        low = key.lower()
        if low not in first:
            first[low] = value
    return pairs, first


def _follows_message(block: bytes) -> Message:
    """Legacy ``Response: Follows``: headers, then free text as Output lines."""
    text = block.decode("utf-8", "replace")
    lines = text.split("\n")
    pairs: list[tuple[str, str]] = []
    body_start = len(lines)
    for i, line in enumerate(lines):
        line = line.rstrip("\r")
        key, sep, value = line.partition(":")
        if i == 0 or (sep and key.lower() in ("privilege", "actionid")):
            pairs.append((key, value[1:] if value.startswith(" ") else value))
            continue
        body_start = i
        break
    end_mark = _END_COMMAND.decode()
    for line in lines[body_start:]:
        line = line.rstrip("\r")
        if line.endswith(end_mark):
            # old versions glue the trailer to output that lacks a final newline
            if line != end_mark:
                pairs.append(("Output", line[:-len(end_mark)]))
            break
        pairs.append(("Output", line))
    return Message(Kind.RESPONSE, "Follows", None, pairs)


def chan_vars(msg: Message) -> dict[str, dict[str, str]]:
    """Channel variables of an event, grouped by channel.

    ``ChanVariable: a=1`` goes under ``""`` (the event's own channel),
    ``ChanVariable(Local/x;2): a=1`` under ``"Local/x;2"``, and
    ``DestChanVariable: a=1`` under ``"dest"``. A bare ``ChanVariable: a``
    means ``a`` is empty.
    """
    out: dict[str, dict[str, str]] = {}
    for key, value in msg.pairs:
        low = key.lower()
        if low.startswith("chanvariable"):
            rest = key[len("chanvariable"):]
            group = rest[1:-1] if rest.startswith("(") and rest.endswith(")") else ""
        elif low.startswith("destchanvariable"):
            group = "dest"
        else:
            continue
        name, _, val = value.partition("=")
        out.setdefault(group, {})[name] = val
    return out


class Parser:
    """Incremental AMI framer: call :meth:`feed` with each read, get messages.

    ``expect_banner`` makes the first line the banner (client side); it is
    stored in :attr:`banner` and never handed out as a message. The parser
    never raises on input: damaged bytes become U+FFFD, oversized messages are
    dropped and counted in :attr:`dropped`.
    """

    def __init__(self, expect_banner: bool = True, max_message: int = MAX_MESSAGE) -> None:
        self.banner: str | None = None
        self.dropped = 0
        self._expect_banner = expect_banner
        self._max = max_message
        self._buf = bytearray()
        # Offset in _buf before which the incomplete message at its start is known
        # to hold no terminator: each read is scanned once, not the whole buffer
        # again (a 1 MiB message in 1 KB reads would otherwise cost ~1000 rescans).
        self._scanned = 0
        self._discarding = False  # inside an oversized message: skip to its end

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        """Add one read's bytes; return the messages they complete (maybe none)."""
        buf = self._buf
        buf += data
        if self._expect_banner and not self._read_banner():
            return []
        out: list[Message] = []
        if self._discarding and not self._skip_oversized():
            return out
        fast = self._feed_fast(out)
        if fast is not None:
            return fast
        pos = 0
        end = len(buf)
        scanned = self._scanned
        search = _TERMINATOR.search
        while pos < end:
            # skip blank lines between messages
            while pos < end and buf[pos] in (13, 10):
                pos += 1
            if pos >= end:
                break
            if buf[pos] in (82, 114) and buf[pos:pos + 17].lower() == _FOLLOWS:
                stop = self._follows_end(pos, max(pos, scanned - len(_END_COMMAND)))
                if stop < 0:
                    break
                out.append(_follows_message(bytes(buf[pos:stop])))
                pos, scanned = stop, 0
                continue
            m = search(buf, max(pos, scanned))
            if m is None:
                break
            scanned = 0
            start, stop = m.span()
            if start - pos > self._max:
                self._drop(start - pos)
            else:
                out.append(Message.from_text(buf[pos:start].decode("utf-8", "replace")))
            pos = stop
        if pos:
            del buf[:pos]
        # a terminator (at most 4 bytes) may straddle this read and the next
        self._scanned = max(0, len(buf) - 3)
        if len(buf) > self._max + _SLACK:
            self._drop(len(buf))
            del buf[:-3]
            self._scanned = 0
            self._discarding = True
        return out

    def _feed_fast(self, out: list[Message]) -> list[Message] | None:
        """The common case in C-speed steps: cut at the last terminator, decode that
        region once, split it on CRLF CRLF. None means "use the careful loop" (a legacy
        Follows block is in the region, whose body may hold blank lines)."""
        buf = self._buf
        start = max(0, self._scanned - 3)
        last = max(buf.rfind(b"\n\r\n", start), buf.rfind(b"\n\n", start))
        if last < 0:
            return None  # no complete message: the careful loop handles size limits
        end = last + (3 if buf[last + 1] == 13 else 2)
        if buf.find(b"Follows", 0, end) >= 0:
            return None
        text = buf[:end].decode("utf-8", "replace")
        del buf[:end]
        limit = self._max
        for block in text.split("\r\n\r\n"):
            parts = _TEXT_TERMINATOR.split(block) if ("\n\n" in block or "\n\r\n" in block) \
                else (block,)
            for part in parts:
                if part[:1] in ("\r", "\n"):
                    part = part.lstrip("\r\n")
                if not part:
                    continue
                if len(part) > limit >> 2 and _size(part) > limit:
                    self._drop(_size(part))
                    continue
                out.append(Message.from_text(part))
        self._scanned = max(0, len(buf) - 3)
        if len(buf) > limit + _SLACK:
            self._drop(len(buf))
            del buf[:-3]
            self._scanned = 0
            self._discarding = True
        return out

    def _read_banner(self) -> bool:
        nl = self._buf.find(b"\n")
        if nl < 0:
            if len(self._buf) > 4096:  # no line end at all: not a banner
                self._expect_banner = False
                return True
            return False
        line = self._buf[:nl].rstrip(b"\r").decode("utf-8", "replace")
        self._expect_banner = False
        if _looks_like_header(line):
            log.warning("AMI server sent no banner; first line is %r", line[:80])
            return True
        if not line.startswith(BANNER_PREFIX):
            log.warning("unexpected AMI banner %r; trying to log in anyway", line[:80])
        self.banner = line
        del self._buf[:nl + 1]
        return True

    def _follows_end(self, pos: int, search_from: int) -> int:
        """End offset (after its blank line) of a Follows block at ``pos``, or -1."""
        mark = self._buf.find(_END_COMMAND, search_from)
        if mark < 0:
            return -1
        nl = self._buf.find(b"\n", mark)
        if nl < 0:
            return -1
        stop = nl + 1
        # the terminating empty line, if already here
        if self._buf[stop:stop + 2] == b"\r\n":
            stop += 2
        elif self._buf[stop:stop + 1] == b"\n":
            stop += 1
        return stop

    def _skip_oversized(self) -> bool:
        m = _TERMINATOR.search(self._buf)
        if m is None:
            del self._buf[:-3]  # a terminator may straddle reads
            return False
        del self._buf[:m.end()]
        self._scanned = 0
        self._discarding = False
        return True

    def _drop(self, size: int) -> None:
        self.dropped += 1
        log.warning("dropped an AMI message of %d bytes (limit %d); resynchronising",
                    size, self._max)


def _looks_like_header(line: str) -> bool:
    key, sep, _ = line.partition(": ")
    return bool(sep) and bool(key) and " " not in key and "/" not in key


# --- actions out ------------------------------------------------------------

HeaderValue = str | int | bool | Iterable[str]


def build_action(name: str, action_id: str,
                 headers: Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]] = (),
                 ) -> bytes:
    """Serialise an action. A list value gives one line per item (``Variable``).

    Raises :class:`AmiProtocolError` naming the header if a key or value holds
    a line break (header injection) or a key is not a plain token.
    """
    lines = [f"Action: {_clean('Action', name)}", f"ActionID: {_clean('ActionID', action_id)}"]
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        if not key or any(c in key for c in ":\r\n "):
            raise AmiProtocolError(f"invalid AMI header name {key!r}: expected a token "
                                   "without ':', spaces or line breaks")
        if key.lower() in ("action", "actionid"):
            raise AmiProtocolError(f"header {key!r} is set by the client; pass it as an argument")
        if isinstance(value, bool):
            lines.append(f"{key}: {'true' if value else 'false'}")
        elif isinstance(value, (str, int)):
            lines.append(f"{key}: {_clean(key, str(value))}")
        else:
            for item in value:
                lines.append(f"{key}: {_clean(key, str(item))}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def _clean(key: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise AmiProtocolError(f"AMI header {key!r} has a line break in its value {value[:40]!r}")
    return value


def is_empty_value(value: str | None) -> bool:
    """True for the ways Asterisk spells "no value": '', <unknown>, <null>."""
    return value is None or value == "" or value in ("<unknown>", "<null>", "<none>")
