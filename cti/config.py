"""Settings: embedded defaults < TOML file < ``CTI_*`` environment variables.

Environment variables use one underscore between section and field:
``CTI_AMI_HOST``, ``CTI_AMI_SECRET``, ``CTI_AGI_PORT``, ``CTI_CRM_DEFAULT_REGION``.
An invalid value raises :class:`~cti.errors.ConfigError` naming the setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from cti.errors import ConfigError


class _Section(BaseModel):
    """A settings section: an unknown key is a typo to report, not to ignore
    (``[ami] secrt = ...`` would otherwise log in with the default secret)."""

    model_config = ConfigDict(extra="forbid")


class Endpoint(_Section):
    host: str
    port: int = Field(ge=1, le=65535)

    @classmethod
    def parse(cls, text: str, default_port: int = 5038) -> Endpoint:
        host, sep, port = text.rpartition(":")
        if not sep:
            return cls(host=text, port=default_port)
        if not port.isdigit():
            raise ValueError(f"AMI endpoint {text!r}: expected host:port")
        return cls(host=host, port=int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class AmiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(5038, ge=1, le=65535)
    backup: str | None = None            # "host:port" of a second Asterisk / proxy
    username: str = "cti"
    secret: SecretStr = SecretStr("ctisecret")
    auth: Literal["plain", "md5"] = "plain"
    connect_timeout: float = Field(5.0, gt=0)
    action_timeout: float = Field(10.0, gt=0)
    ping_interval: float = Field(10.0, gt=0)
    ping_timeout: float = Field(5.0, gt=0)
    fully_booted_timeout: float = Field(5.0, ge=0)
    backoff_initial: float = Field(0.5, gt=0)
    backoff_max: float = Field(30.0, gt=0)
    auth_backoff_initial: float = Field(5.0, gt=0)   # a wrong secret is retried slowly
    auth_backoff_max: float = Field(300.0, gt=0)

    @property
    def endpoints(self) -> list[Endpoint]:
        eps = [Endpoint(host=self.host, port=self.port)]
        if self.backup:
            eps.append(Endpoint.parse(self.backup, self.port))
        return eps

    @field_validator("backup")
    @classmethod
    def _check_backup(cls, v: str | None) -> str | None:
        if v:
            Endpoint.parse(v)
        return v or None


class AgiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(4573, ge=0, le=65535)
    header_timeout: float = Field(2.0, gt=0)        # env block must arrive within this
    lookup_budget_ms: int = Field(300, ge=10, le=10000)  # CRM time inside a route
    max_sessions: int = Field(500, ge=1)


class RouteRule(_Section):
    """A rule matches when the customer has any listed segment, tag or flag."""

    name: str
    queue: str
    priority: int = 0
    segments: list[str] = []
    tags: list[str] = []
    flags: list[str] = []

    @model_validator(mode="after")
    def _has_condition(self) -> RouteRule:
        if not (self.segments or self.tags or self.flags):
            raise ValueError(f"route rule {self.name!r} has no segments, tags or flags to match")
        return self


def _default_rules() -> list[RouteRule]:
    return [
        RouteRule(name="vip", queue="vip", priority=5, segments=["gold", "platinum"], tags=["vip"]),
        RouteRule(name="open-complaint", queue="complaints", priority=0,
                  flags=["open_complaint"]),
        RouteRule(name="overflow", queue="overflow", priority=0, tags=["overflow"]),
    ]


class RoutingSettings(_Section):
    # Not "general": that name is queues.conf's settings section, so a static
    # queue cannot have it (the recording lab had to use realtime for it).
    default_queue: str = "general"          # unknown caller, CRM slow or down
    default_priority: int = 0
    known_queue: str = "general"            # known customer, no rule matched
    unknown_segment: str = "unknown"
    rules: list[RouteRule] = Field(default_factory=_default_rules)


class AgentSettings(_Section):
    """One agent: how Asterisk names their phone(s), and their pop token."""

    id: str
    name: str = ""
    interfaces: list[str] = []       # queue member interfaces / devices
    member_names: list[str] = []     # queue MemberName values
    token: SecretStr = SecretStr("")


def _demo_agents() -> list[AgentSettings]:
    rows = [("1001", "Alice", ["Agent Alice"]), ("1002", "Bob", ["Agent Bob"]),
            ("1003", "Carol", ["Agent Carol"]), ("1004", "Dave", ["Agent Dave", "Supervisor Dave"]),
            ("2001", "NoAnswer", ["Agent NoAnswer"]), ("3001", "Busy", ["Agent Busy"])]
    return [AgentSettings(id=i, name=n, member_names=m,
                          interfaces=[f"Local/{i}@agents/n", f"PJSIP/{i}"],
                          token=SecretStr(f"demo-{i}")) for i, n, m in rows]


class PopSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    heartbeat_interval: float = Field(20.0, gt=0)
    heartbeat_timeout: float = Field(20.0, gt=0)
    send_queue: int = Field(256, ge=1)           # per connection; overflow closes it
    max_connections: int = Field(5000, ge=1)
    max_per_agent: int = Field(5, ge=1)
    auth_timeout: float = Field(5.0, gt=0)
    articles_per_pop: int = Field(5, ge=0)


class CrmSettings(_Section):
    backend: Literal["sqlite"] = "sqlite"
    path: Path = Path("var/crm.sqlite3")
    default_region: str = "US"                   # ISO 3166 code for national numbers
    seed_demo: bool = False                      # `cti demo` turns it on: demo customers
    cache_ttl: float = Field(60.0, ge=0)
    negative_ttl: float = Field(20.0, ge=0)
    breaker_failures: int = Field(5, ge=1)
    breaker_reset: float = Field(30.0, gt=0)
    min_digits: int = Field(3, ge=1)             # shorter caller ids are "unknown"
    history_days: int = Field(90, ge=1)

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        import phonenumbers

        v = v.upper()
        if v not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"crm.default_region {v!r} is not an ISO 3166 region phonenumbers knows")
        return v


class StoreSettings(_Section):
    path: Path = Path("var/cti.sqlite3")


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class SimSettings(_Section):
    """The PBX simulator the demo runs instead of a real Asterisk."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(5038, ge=0, le=65535)
    rate: float = Field(0.2, gt=0)      # new calls per second
    speed: float = Field(1.0, gt=0)     # time compression (2 = twice as fast)
    seed: int | None = None


class CallSettings(_Section):
    outbound_contexts: list[str] = ["callbacks"]   # root channel in these = outbound
    keep_ended: float = Field(60.0, ge=0)          # seconds a finished call stays queryable live


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_logs: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CTI_", env_nested_delimiter="_", env_nested_max_split=1,
        extra="forbid", case_sensitive=False,
    )

    ami: AmiSettings = AmiSettings()
    agi: AgiSettings = AgiSettings()
    routing: RoutingSettings = RoutingSettings()
    agents: list[AgentSettings] = Field(default_factory=_demo_agents)
    pops: PopSettings = PopSettings()
    crm: CrmSettings = CrmSettings()
    store: StoreSettings = StoreSettings()
    http: HttpSettings = HttpSettings()
    sim: SimSettings = SimSettings()
    calls: CallSettings = CallSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _unique_agents(self) -> Settings:
        seen: set[str] = set()
        for agent in self.agents:
            if agent.id in seen:
                raise ValueError(f"agent id {agent.id!r} is listed twice")
            seen.add(agent.id)
        return self


_SECRET_FIELDS = ("secret", "token", "password", "api_key", "apikey")


def _is_secret(loc: tuple[object, ...]) -> bool:
    """Whether a validation error's location names a secret (its value is not echoed)."""
    return any(isinstance(p, str) and any(s in p.lower() for s in _SECRET_FIELDS)
               for p in loc)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (TOML) and the environment.

    Raises :class:`ConfigError` naming the file, the setting and the problem.
    """
    toml_path = Path(path) if path else None
    if toml_path is not None and not toml_path.is_file():
        raise ConfigError(f"config file {str(toml_path)!r} does not exist")

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if toml_path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
            return tuple(sources)

    where = f"config file {str(toml_path)!r}" if toml_path else "configuration"
    try:
        return _FileSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"invalid {where}: {problems}") from None
    except (OSError, ValueError) as exc:  # TOML syntax errors are ValueErrors
        raise ConfigError(f"cannot read {where}: {exc}") from None


def _describe(err: Any) -> str:
    """One validation error as "section.field: problem (got value) [set by CTI_X]"."""
    loc = err["loc"]
    text = f"{'.'.join(str(p) for p in loc) or '(top)'}: {err['msg']}"
    # a misspelt key may hold a secret ("secrt"): its value is never shown
    if (err["type"] not in ("missing", "extra_forbidden")
            and not isinstance(err.get("input"), (dict, list)) and not _is_secret(loc)):
        text += f" (got {err['input']!r})"
    env = "CTI_" + "_".join(str(p) for p in loc[:2]).upper()
    if len(loc) >= 1 and env in os.environ:
        text += f" [set by environment variable {env}]"
    return text
