"""FastAGI wire format: the request environment, replies and commands. No I/O.

Theory of operation
-------------------
Right after the TCP connect Asterisk writes the *environment*: ``agi_<name>:
<value>`` lines ended by ``\\n`` and closed by an empty line. Then the roles
swap: the server writes one command line, Asterisk answers with one reply, and
so on until the server closes the socket.

Feed the environment to :class:`EnvReader` (it frames on bytes, so 1-byte TCP
segments or a block split anywhere are fine) and get an :class:`AgiRequest`.
Feed everything Asterisk writes after that to :class:`ReplyReader`; it yields
:class:`AgiReply` objects and :data:`HANGUP` notices. Build commands with
:func:`set_variable_command`, :func:`get_variable_command`,
:func:`verbose_command` or :func:`quote`, and turn them into bytes with
:func:`encode_command`.

What real Asterisk servers send, and how it is handled here:

* each line is decoded as UTF-8 with replacement: Asterisk cuts long caller
  names at a byte count, which can leave half a character (case 18);
* values are kept verbatim after the ``": "`` separator. ``agi_arg_1:  x``
  (two spaces) is the argument ``" x"``: the dialplan passed a leading space
  and it is not ours to drop. ``agi_accountcode: `` is the empty string;
* ``unknown`` in ``agi_callerid``/``agi_calleridname``/``agi_dnid``/
  ``agi_rdnis`` means "no value" and reads as ``None``;
* ``HANGUP`` is an unsolicited notification written on the reply stream when
  the channel hangs up, possibly glued to the next reply (``HANGUP200
  result=1``). It is reported separately so replies stay paired with commands;
* ``100 result=0 Trying...`` is an intermediate reply (``GOSUB``), the final
  one follows; ``520-`` opens a multi-line usage text closed by ``520 ...``;
* ``511`` (command not permitted on a dead channel) and ``result=-1
  (hangup)`` mean the channel is gone.

Anything else raises :class:`~cti.errors.AgiProtocolError` naming the line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, urlsplit

from cti.errors import AgiHangup, AgiProtocolError

MAX_ENV_BYTES = 64 * 1024   # a real environment is ~700 bytes; more is not Asterisk
MAX_LINE_BYTES = 16 * 1024  # one reply line (a GET VARIABLE value can be long)
MAX_USAGE_LINES = 500       # a 520 usage text is ~20 lines
MAX_COMMAND_BYTES = 2048    # Asterisk reads commands into a 2 KB buffer (AGI_BUF_LEN)

#: Reply codes Asterisk sends; anything else is not a FastAGI reply.
REPLY_CODES = frozenset({100, 200, 510, 511, 520})

#: Commands Asterisk still runs on a hung-up channel; others get ``511``.
DEAD_SAFE_VERBS = frozenset({
    "ASYNCAGI BREAK", "DATABASE DEL", "DATABASE DELTREE", "DATABASE GET", "DATABASE PUT",
    "GET FULL VARIABLE", "GET VARIABLE", "NOOP", "SET VARIABLE", "VERBOSE",
})

_ENV_LINE = re.compile(r"(agi_[A-Za-z0-9_]+): (.*)", re.DOTALL)
_STATUS = re.compile(r"(\d{3})([ -]|$)(.*)", re.DOTALL)
# result=<value> [(<data>)] [key=value ...]; data is greedy so it may contain ')'.
_RESULT = re.compile(r"result=(\S+)(?: \((.*)\))?((?: [A-Za-z_]+=\S*)*) *", re.DOTALL)
_NO_VALUE = "unknown"
_BAD_COMMAND_CHARS = re.compile(r"[\r\n\x00]")
_BAD_NAME_CHARS = re.compile(r"[\s\"\\]")


def _show(line: str | bytes, limit: int = 80) -> str:
    """A line as it appears in error messages: repr, cut to ``limit`` chars."""
    text = repr(line)
    return text if len(text) <= limit else text[:limit] + "...'"


# --- request environment ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgiRequest:
    """One FastAGI request: the environment Asterisk sent, plus what it means.

    ``script`` is the routing key: ``agi_network_script`` without leading
    slashes and without the query (``agi://h/crm/lookup?x=1`` -> ``crm/lookup``),
    ``None`` when the URL has no path. ``params`` is the URL-decoded query,
    repeated names kept (``{"x": ["1"]}``). ``args`` holds ``agi_arg_1`` ..
    ``agi_arg_N`` in order, values verbatim; :meth:`arg` tells an absent
    argument (``None``) from an empty one (``""``).
    """

    env: dict[str, str]
    script: str | None
    params: dict[str, list[str]] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    def get(self, name: str) -> str | None:
        """``env["agi_" + name]`` or ``None``; ``get("callerid")``."""
        return self.env.get(f"agi_{name}")

    def arg(self, n: int) -> str | None:
        """Argument ``n`` (1-based) as sent, or ``None`` if Asterisk sent none."""
        return self.env.get(f"agi_arg_{n}")

    def _known(self, name: str) -> str | None:
        value = self.get(name)
        return None if value is None or value == "" or value == _NO_VALUE else value

    @property
    def uniqueid(self) -> str | None:
        """The Uniqueid of the channel running the AGI (not the Linkedid)."""
        return self.get("uniqueid") or None

    @property
    def channel(self) -> str | None:
        return self.get("channel") or None

    @property
    def callerid(self) -> str | None:
        """Caller number as Asterisk has it; ``None`` for ``unknown`` or empty."""
        return self._known("callerid")

    @property
    def calleridname(self) -> str | None:
        return self._known("calleridname")

    @property
    def dnid(self) -> str | None:
        """Dialled number; Local channels always say ``unknown`` (-> ``None``)."""
        return self._known("dnid")

    @property
    def rdnis(self) -> str | None:
        return self._known("rdnis")

    @property
    def extension(self) -> str | None:
        return self.get("extension") or None

    @property
    def context(self) -> str | None:
        return self.get("context") or None

    @property
    def accountcode(self) -> str:
        """Account code, whitespace trimmed; ``""`` when the channel has none."""
        return (self.get("accountcode") or "").strip()

    @property
    def threadid(self) -> int | None:
        """Asterisk's thread id (diagnostics only; may be negative)."""
        try:
            return int(self.get("threadid") or "")
        except ValueError:
            return None


def _script_and_query(env: dict[str, str]) -> tuple[str | None, str]:
    raw = env.get("agi_network_script")
    if raw is None:
        # Asterisk omits the line when the URL has no path; agi_request may still
        # carry one if another FastAGI proxy wrote the environment.
        request = env.get("agi_request", "")
        parts = urlsplit(request) if "://" in request else None
        if parts is None:
            return None, ""
        raw = parts.path + ("?" + parts.query if parts.query else "")
    path, _, query = raw.partition("?")
    path = path.lstrip("/")
    return (path or None), query


def build_request(env: dict[str, str]) -> AgiRequest:
    """Interpret a parsed environment (see :class:`AgiRequest`). Never raises."""
    script, query = _script_and_query(env)
    params = parse_qs(query, keep_blank_values=True, errors="replace") if query else {}
    args: list[str] = []
    # Asterisk numbers arguments 1..N without gaps; stop at the first gap.
    while (value := env.get(f"agi_arg_{len(args) + 1}")) is not None:
        args.append(value)
    return AgiRequest(env=dict(env), script=script, params=params, args=args)


def parse_env_line(line: str) -> tuple[str, str]:
    """Split one ``agi_<name>: <value>`` line; raises AgiProtocolError otherwise."""
    match = _ENV_LINE.fullmatch(line)
    if match is None:
        raise AgiProtocolError(
            f"FastAGI environment line {_show(line)}: expected 'agi_<name>: <value>'")
    return match.group(1), match.group(2)


def parse_env(lines: list[str] | list[bytes]) -> AgiRequest:
    """Parse environment lines (without line ends; a blank line stops parsing).

    Bytes are decoded as UTF-8 with replacement. Raises AgiProtocolError
    naming the first line that is not ``agi_<name>: <value>``.
    """
    env: dict[str, str] = {}
    for item in lines:
        line = item.decode("utf-8", "replace") if isinstance(item, bytes) else item
        line = line.rstrip("\r\n")
        if line == "":
            break
        key, value = parse_env_line(line)
        env[key] = value
    return build_request(env)


class EnvReader:
    """Incremental reader of the environment block.

    Call :meth:`feed` with each chunk read from the socket until it returns an
    :class:`AgiRequest`; then hand :attr:`rest` (bytes after the blank line) to
    a :class:`ReplyReader`. Raises AgiProtocolError on a malformed line or a
    block larger than ``max_bytes``; the reader is then unusable.
    """

    def __init__(self, max_bytes: int = MAX_ENV_BYTES) -> None:
        self._buf = bytearray()
        self._env: dict[str, str] = {}
        self._seen = 0
        self._max = max_bytes
        self.request: AgiRequest | None = None
        self.rest = b""

    @property
    def started(self) -> bool:
        """True once any byte arrived (tells a silent probe from a cut request)."""
        return self._seen > 0

    def feed(self, data: bytes) -> AgiRequest | None:
        """Add bytes; return the request once the blank line arrived, else None."""
        if self.request is not None:
            self.rest += data
            return self.request
        self._seen += len(data)
        self._buf += data
        while (end := self._buf.find(b"\n")) >= 0:
            raw = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[:end + 1]
            if raw == b"":
                self.request = build_request(self._env)
                self.rest = bytes(self._buf)
                self._buf.clear()
                return self.request
            key, value = parse_env_line(raw.decode("utf-8", "replace"))
            self._env[key] = value
        if self._seen > self._max:
            raise AgiProtocolError(
                f"FastAGI environment larger than {self._max} bytes without a blank line")
        return None


# --- replies ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgiReply:
    """One reply from Asterisk.

    ``result`` is the ``result=`` value verbatim (``"1"``, ``"-1"``, digits for
    GET DATA), ``data`` the text in parentheses (a GET VARIABLE value),
    ``extra`` trailing ``key=value`` pairs (``endpos``). ``text`` is the message
    of a 1xx/5xx reply, ``usage`` the lines of a ``520-`` usage block.
    ``hangup`` is true when this reply, or a HANGUP notice before it, says the
    channel is gone.
    """

    code: int
    result: str | None = None
    data: str | None = None
    hangup: bool = False
    extra: dict[str, str] = field(default_factory=dict)
    text: str = ""
    usage: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def final(self) -> bool:
        """False for ``100 Trying``: the real reply is still to come."""
        return self.code != 100


class HangupNotice:
    """The ``HANGUP`` line Asterisk writes when the channel hangs up."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HANGUP"


#: The one HANGUP notice object :class:`ReplyReader` yields.
HANGUP = HangupNotice()


def parse_status_line(line: str) -> AgiReply:
    """Parse one complete reply line (``200 result=1 (x)``, ``510 ...``).

    A ``520-`` line returns a 520 reply whose ``text`` is the header; the usage
    lines are :class:`ReplyReader`'s job. Raises AgiProtocolError for a line
    that is not a known reply code followed by its text.
    """
    match = _STATUS.fullmatch(line)
    code = int(match.group(1)) if match else None
    if match is None or code not in REPLY_CODES:
        raise AgiProtocolError(
            f"FastAGI reply {_show(line)}: expected '<100|200|510|511|520> ...'")
    rest = match.group(3)
    if code == 200:
        res = _RESULT.fullmatch(rest)
        if res is None:
            raise AgiProtocolError(f"FastAGI reply {_show(line)}: expected '200 result=<n>'")
        result, data, extra_text = res.group(1), res.group(2), res.group(3)
        extra = dict(pair.split("=", 1) for pair in extra_text.split())
        hangup = result == "-1" and data == "hangup"
        return AgiReply(code, result=result, data=data, hangup=hangup, extra=extra)
    if code == 100:
        res = _RESULT.match(rest)
        return AgiReply(code, result=res.group(1) if res else None, text=rest)
    return AgiReply(code, hangup=(code == 511), text=rest.strip())


class ReplyReader:
    """Incremental reader of everything Asterisk writes after the environment.

    :meth:`feed` returns, in order, :data:`HANGUP` notices and
    :class:`AgiReply` objects (including intermediate ``100`` replies; a
    session skips those). Raises AgiProtocolError on junk; the stream is then
    out of step and the connection should be closed.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._usage: list[str] | None = None   # inside a 520- block
        self._usage_head = ""

    def feed(self, data: bytes) -> list[AgiReply | HangupNotice]:
        self._buf += data
        out: list[AgiReply | HangupNotice] = []
        while (end := self._buf.find(b"\n")) >= 0:
            raw = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[:end + 1]
            self._line(raw.decode("utf-8", "replace"), out)
        if len(self._buf) > MAX_LINE_BYTES:
            raise AgiProtocolError(f"FastAGI reply line longer than {MAX_LINE_BYTES} bytes")
        return out

    def _line(self, line: str, out: list[AgiReply | HangupNotice]) -> None:
        if self._usage is not None:
            if line.startswith("520 ") or line == "520":
                out.append(AgiReply(520, text=self._usage_head, usage=tuple(self._usage)))
                self._usage = None
            elif len(self._usage) >= MAX_USAGE_LINES:
                raise AgiProtocolError(
                    f"FastAGI 520 usage text longer than {MAX_USAGE_LINES} lines")
            else:
                self._usage.append(line)
            return

        # The notification may be glued to the next reply (asterisk-java saw it).
        while line.startswith("HANGUP"):
            out.append(HANGUP)
            line = line[len("HANGUP"):].lstrip()
        if not line.strip():
            return

        if line.startswith("520-"):
            self._usage_head = line[4:].strip()
            self._usage = []
            return
        out.append(parse_status_line(line))


def parse_reply(text: str | bytes) -> AgiReply:
    """The final reply in ``text`` (one or more lines, line end optional).

    HANGUP notices before it set ``hangup``; ``100`` replies are skipped; a
    ``520-`` block is collected. Raises AgiHangup when there is only a HANGUP,
    AgiProtocolError for junk or when no final reply is complete.
    """
    data = text.encode() if isinstance(text, str) else text
    if not data.endswith(b"\n"):
        data += b"\n"
    hangup = False
    for item in ReplyReader().feed(data):
        if item is HANGUP:
            hangup = True
        elif isinstance(item, AgiReply) and item.final:
            return replace(item, hangup=True) if hangup and not item.hangup else item
    if hangup:
        raise AgiHangup("Asterisk sent HANGUP and no reply")
    raise AgiProtocolError(f"FastAGI reply {_show(text)}: no final reply in it")


# --- commands ---------------------------------------------------------------


def quote(value: str) -> str:
    """``value`` as one double-quoted AGI argument (``\\`` and ``"`` escaped).

    Raises AgiProtocolError if it contains CR, LF or NUL: a line break would
    end the command early and the rest would run as a second command.
    """
    if _BAD_COMMAND_CHARS.search(value):
        raise AgiProtocolError(
            f"AGI argument {_show(value)}: line breaks and NUL cannot be sent")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _name(name: str) -> str:
    if not name or _BAD_NAME_CHARS.search(name) or _BAD_COMMAND_CHARS.search(name):
        raise AgiProtocolError(
            f"AGI variable name {_show(name)}: expected a name without spaces or quotes")
    return name


def set_variable_command(name: str, value: str) -> str:
    """``SET VARIABLE CTI_QUEUE "vip"``; raises AgiProtocolError on a bad name/value."""
    return f"SET VARIABLE {_name(name)} {quote(str(value))}"


def get_variable_command(name: str) -> str:
    """``GET VARIABLE CALLERID(num)``; raises AgiProtocolError on a bad name."""
    return f"GET VARIABLE {_name(name)}"


def verbose_command(message: str, level: int = 1) -> str:
    """``VERBOSE "text" 1``; raises AgiProtocolError on a bad message or level."""
    if not 1 <= level <= 4:
        raise AgiProtocolError(f"VERBOSE level {level!r}: expected 1..4")
    return f"VERBOSE {quote(message)} {level}"


_MULTI_WORD = frozenset({"ASYNCAGI", "CHANNEL", "CONTROL", "DATABASE", "GET", "RECEIVE",
                         "RECORD", "SAY", "SEND", "SET", "SPEECH", "STREAM", "TDD", "WAIT"})


def command_verb(command: str) -> str:
    """The command's name in upper case: ``SET VARIABLE``, ``EXEC``, ``ANSWER``."""
    words = command.upper().split()
    if not words:
        return ""
    if words[:2] == ["GET", "FULL"]:
        return "GET FULL VARIABLE"
    if words[0] in _MULTI_WORD and len(words) > 1:
        return " ".join(words[:2])
    return words[0]


def is_dead_safe(command: str) -> bool:
    """Whether Asterisk still runs ``command`` after the channel hung up."""
    return command_verb(command) in DEAD_SAFE_VERBS


def encode_command(command: str) -> bytes:
    """The bytes to send for one command line.

    Raises AgiProtocolError for an empty command, CR/LF/NUL inside it, or a
    line longer than Asterisk's 2 KB command buffer.
    """
    if not command.strip():
        raise AgiProtocolError("AGI command is empty")
    if _BAD_COMMAND_CHARS.search(command):
        raise AgiProtocolError(f"AGI command {_show(command)}: contains a line break or NUL")
    data = command.encode("utf-8") + b"\n"
    if len(data) > MAX_COMMAND_BYTES:
        raise AgiProtocolError(
            f"AGI command {_show(command)}: {len(data)} bytes, Asterisk reads at most "
            f"{MAX_COMMAND_BYTES}")
    return data
