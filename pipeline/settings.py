"""The one settings object: environment variables (prefix ``CXP_``) over an optional YAML file.

Precedence, highest first: explicit arguments, environment, the file named by ``CXP_CONFIG_FILE``,
the defaults. Settings are grouped in sections (:class:`pipeline.config.Section`): the infrastructure
ones below, and one per metric core that has settings, declared in the core's own module and added
here from the core registry. Every variable keeps its flat name (``CXP_KAFKA_URL`` is ``kafka.url``,
``CXP_CHURN_HIGH`` is ``churn.high``), and the YAML file uses the same names in lower case. Every
field's description is the documentation (``cxp config`` prints it).
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Optional
from urllib.parse import urlparse

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipeline.config import ENV_PREFIX, Duration, Names, Section, Windows, check_identifier, positive
from pipeline.metrics.registry import CORE_CLASSES, enabled_classes
from pipeline.secret_values import ConfigurationError, read_secret_file, token_lines

PII_MIN_KEY_BYTES = 16
LOG_LEVELS = ("debug", "info", "warning", "error")
PositiveDuration = Annotated[Duration, AfterValidator(positive)]
Port = Annotated[int, Field(ge=1, le=65535)]


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _existing_file(path: Optional[Path]) -> Optional[Path]:
    """A field validator's check for a file the program reads (certificates, keys): it must be a readable file."""
    if path is not None:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return path


def _secret_file(path: Optional[Path]) -> Optional[Path]:
    """A field validator's check for a file holding a secret: readable and not blank."""
    if path is not None and not _existing_file(path).read_text(errors="replace").strip():
        raise ValueError(f"{path} is empty")
    return path


ReadableFile = Annotated[Optional[Path], AfterValidator(_existing_file)]
SecretFile = Annotated[Optional[Path], AfterValidator(_secret_file)]


def _kafka_servers(value: Optional[str]) -> Optional[str]:
    """kafka://host:port[,host:port] or the plain host:port[,host:port] form; stored without the scheme."""
    if not value:
        return None
    servers = value.split("://", 1)[1] if "://" in value else value
    scheme = value.split("://", 1)[0] if "://" in value else "kafka"
    if scheme != "kafka":
        raise ValueError(f"use kafka://host:9092 or host:9092, not {scheme}://...")
    for server in servers.rstrip("/").split(","):
        _check_host_port(server.strip(), "kafka:9092 or kafka://kafka:9092")
    return ",".join(server.strip() for server in servers.rstrip("/").split(","))


def _check_host_port(server: str, example: str) -> None:
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{server!r} is not host:port (e.g. {example})")


def _clickhouse_servers(servers: list[str]) -> list[str]:
    for server in servers:
        _check_host_port(server, "ch-2:9000")
    return servers


class KafkaSettings(Section):
    prefix = "kafka_"
    url: Annotated[Optional[str], AfterValidator(_kafka_servers)] = Field(
        None, description="Kafka bootstrap servers: host:port[,host:port] (kafka://host:port also works). Unset: "
        "`cxp demo` starts a local Tansu broker; `cxp worker` requires it.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol of every client (worker, producer, topic admin).")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism, with kafka_security_protocol SASL_PLAINTEXT or SASL_SSL.")
    sasl_username: Optional[str] = Field(None, description="SASL user name.")
    sasl_password: Optional[SecretStr] = Field(None, description="SASL password.")
    sasl_password_file: SecretFile = Field(None, description="File holding the SASL password.")
    ssl_cafile: ReadableFile = Field(
        None, description="CA certificates (PEM) to verify the brokers with, for SSL/SASL_SSL. Unset: the system's.")
    ssl_certfile: ReadableFile = Field(None, description="Client certificate (PEM) for mutual TLS.")
    ssl_keyfile: ReadableFile = Field(None, description="Private key (PEM) of the client certificate.")
    schema_registry_url: Optional[str] = Field(
        None, alias="schema_registry_url",
        description="Confluent-compatible schema registry URL. Unset: the bundled schemas with fixed ids.")
    topic_prefix: str = Field("cx.", alias="topic_prefix",
                              description="Prefix of every topic name (cx.events.web, cx.deadletter, ...).")
    partitions: int = Field(4, ge=1, alias="partitions",
                            description="Partitions per input topic when cx-pipeline creates the topics.")
    topic_replication_factor: int = Field(
        1, ge=1, alias="topic_replication_factor", description="Replicas of each topic cx-pipeline creates (3 on a "
        "three-broker cluster; the brokers' min.insync.replicas decides how many must acknowledge a write).")
    app_id: str = Field("cx-pipeline", alias="app_id",
                        description="Faust application id: the consumer group of the workers.")
    session_timeout: PositiveDuration = Field(
        Duration("10s"), alias="session_timeout",
        description="Kafka consumer-group session timeout (group joins take about half).")
    batch_max_messages: int = Field(2_000, ge=1, alias="batch_max_messages",
                                    description="Most Kafka messages the worker processes in one batch: a batch is "
                                    "what one fetch returned, up to this and batch_max_bytes.")
    batch_max_bytes: int = Field(256 * 1024, ge=1, alias="batch_max_bytes",
                                 description="Most bytes of Kafka message values in one batch (a message larger "
                                 "than this is a batch of its own).")

    @field_validator("topic_prefix", "app_id")
    @classmethod
    def _check_kafka_name(cls, value: str, info: Any) -> str:
        if not all(c.isalnum() or c in "._-" for c in value):
            raise ValueError(f"invalid {info.field_name} {value!r}: Kafka names use only letters, digits, . _ -")
        return value

    @field_validator("schema_registry_url")
    @classmethod
    def _check_registry_url(cls, value: Optional[str]) -> Optional[str]:
        if value and (urlparse(value).scheme not in ("http", "https") or not urlparse(value).hostname):
            raise ValueError("must look like http://registry:8081 (https:// for TLS; user:password@ for basic auth)")
        return value or None

    @model_validator(mode="after")
    def _check_security(self) -> "KafkaSettings":
        """Combinations no broker could accept, named by their variables."""
        protocol = self.security_protocol
        if self.uses_sasl:
            has_password = bool(self.sasl_password and self.sasl_password.get_secret_value()) or self.sasl_password_file
            if not (self.sasl_username and has_password):
                raise ValueError(f"{self.env_name('security_protocol')}={protocol} needs "
                                 f"{self.env_name('sasl_username')} and {self.env_name('sasl_password')} "
                                 f"(or {self.env_name('sasl_password_file')})")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError(f"a Kafka client certificate needs both {self.env_name('ssl_certfile')} and "
                             f"{self.env_name('ssl_keyfile')}")
        if not self.uses_tls and (self.ssl_cafile or self.ssl_certfile):
            raise ValueError(f"CXP_KAFKA_SSL_* files are set but {self.env_name('security_protocol')} is {protocol}: "
                             "use SSL or SASL_SSL")
        return self

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def bootstrap_servers(self) -> str:
        """host:port[,host:port]."""
        if not self.url:
            raise ValueError("no Kafka configured: set CXP_KAFKA_URL=kafka:9092 (or run `cxp demo`)")
        return self.url

    def topic(self, name: str) -> str:
        """Full topic name: topic('events.web') -> 'cx.events.web'."""
        return f"{self.topic_prefix}{name}"


class ClickHouseSettings(Section):
    prefix = "clickhouse_"
    url: Optional[str] = Field(
        None, description="ClickHouse server as clickhouse://user:password@host:9000/cx (native protocol). "
        "Unset: embedded chdb under data_dir/clickhouse.")
    database: str = Field("cx", description="ClickHouse database for all tables.")
    alt_hosts: Annotated[Names, AfterValidator(_clickhouse_servers)] = Field(
        [], description="The other servers of a ClickHouse cluster as host:port (comma-separated): when the "
        "clickhouse_url server does not answer, the worker connects to the first of these that does, in order.")
    cluster: Optional[str] = Field(
        None, description="ClickHouse cluster (a remote_servers name) for cluster mode: replicated `<table>_local` "
        "tables and Distributed tables over them, created ON CLUSTER; inserts wait for a majority of the replicas "
        "of the shard. Unset: one server.")
    connect_timeout: PositiveDuration = Field(Duration("3s"), description="How long to wait for a ClickHouse connection.")
    timeout: PositiveDuration = Field(
        Duration("10s"), description="How long a ClickHouse insert or query may wait on the socket before it counts "
        "as a sink error and is retried: a server that stops answering shows up in cxp_sink_errors_total one "
        "timeout after an attempt starts, and again for every attempt.")
    password_file: SecretFile = Field(
        None, description="File holding the ClickHouse password; overrides a password in clickhouse_url.")
    secure: bool = Field(False, description="Connect to ClickHouse over TLS (as a clickhouses:// URL does; port 9440 "
                         "usually).")
    ca_file: ReadableFile = Field(
        None, description="CA certificates (PEM) to verify the ClickHouse server with. Unset: the system's.")

    @field_validator("database", "cluster")
    @classmethod
    def _check_sql_identifier(cls, value: Optional[str], info: Any) -> Optional[str]:
        return value if value is None else check_identifier(f"clickhouse_{info.field_name}", value)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in ("clickhouse", "clickhouses"):
            raise ValueError("must look like clickhouse://user:password@host:9000/cx "
                             "(clickhouses:// for TLS)")
        database = parsed.path.strip("/")
        if database:
            check_identifier("database in clickhouse_url", database)
        return value

    @model_validator(mode="after")
    def _alt_hosts_need_a_cluster(self) -> "ClickHouseSettings":
        if self.alt_hosts and not (self.url and self.cluster):
            raise ValueError("CXP_CLICKHOUSE_ALT_HOSTS needs CXP_CLICKHOUSE_URL and CXP_CLICKHOUSE_CLUSTER: servers "
                             "outside a cluster each hold their own tables, so switching between them would split "
                             "the data")
        return self


class SinkSettings(Section):
    prefix = "sink_"
    batch_rows: int = Field(50_000, ge=1, description="Buffered rows that trigger a ClickHouse flush while input "
                            "waits to be processed (a worker that has caught up flushes at once).")
    flush_interval: PositiveDuration = Field(
        Duration("1s"), description="Longest time buffered rows wait for a flush while input waits to be processed "
        "(a worker that has caught up flushes at once, so this bounds the latency only under a backlog).")
    min_flush_interval: Duration = Field(
        Duration("0.2s"), description="Shortest time between the starts of two flushes, so a worker that keeps up "
        "makes at most 1/this inserts per table per second (ClickHouse makes a part per insert and merges them in "
        "the background); it adds at most this much latency.")
    retry_backoff: PositiveDuration = Field(
        Duration("0.2"), description="First delay before a failed delivery (ClickHouse insert or topic send) is "
        "retried; it doubles per failure up to sink_retry_max_backoff. Input is held back meanwhile, never dropped.")
    retry_max_backoff: PositiveDuration = Field(Duration("10s"), description="Longest delay between delivery retries.")

    @model_validator(mode="after")
    def _check_order(self) -> "SinkSettings":
        if self.min_flush_interval.ms > self.flush_interval.ms:
            raise ValueError(f"{self.env_name('min_flush_interval')} ({self.min_flush_interval}) must not be above "
                             f"{self.env_name('flush_interval')} ({self.flush_interval}): lower it")
        if self.retry_backoff.ms > self.retry_max_backoff.ms:
            raise ValueError(f"{self.env_name('retry_backoff')} ({self.retry_backoff}) must not be above "
                             f"{self.env_name('retry_max_backoff')} ({self.retry_max_backoff})")
        return self


class WebSettings(Section):
    prefix = "web_"
    host: str = Field("127.0.0.1", description="Address the worker's web server (/metrics, /progress, collector) binds.")
    port: Port = Field(6066, description="Port of the worker's web server (1-65535). Give each worker on a host its own.")
    collector_max_body: int = Field(
        1_048_576, ge=1, le=1_048_576, alias="collector_max_body",
        description="Largest HTTP collector request body in bytes (at most 1 MiB, the web server's own cap).")
    max_message_bytes: int = Field(
        900_000, ge=1_000, le=990_000, alias="max_message_bytes",
        description="Largest Kafka message (key + value) the collector writes; a request's events are split into "
        "as many batch messages as this needs. Stays under the producer's 1,000,000-byte request limit.")
    collector_send_timeout: PositiveDuration = Field(
        Duration("30s"), alias="collector_send_timeout",
        description="How long the collector waits for Kafka to take a request's messages before a 503.")


class SecuritySettings(Section):
    pii_key: Optional[SecretStr] = Field(
        None, description="PII mode: with this secret (at least 16 bytes) set, customer, anonymous, session and CRM "
        "account ids are replaced by their keyed hash in the worker. Never shown; prefer pii_key_file.")
    pii_key_file: Optional[Path] = Field(
        None, description="File holding the PII mode key (its bytes, without a trailing newline); instead of pii_key.")
    pii_drop_text: bool = Field(True, description="In PII mode, drop survey comments and chatbot text (true) or keep "
                                "them (false).")
    pii_cache_size: int = Field(100_000, ge=0, description="In PII mode, ids whose hash is cached (the most recently "
                                "seen).")
    collector_tokens: Optional[SecretStr] = Field(
        None, description="Bearer tokens the collector accepts (comma-separated; several at once for rotation). "
        "Unset, and no collector_tokens_file: the collector takes requests without a token.")
    collector_tokens_file: SecretFile = Field(
        None, description="File of collector tokens, one per line (# comments allowed), read at start-up; "
        "adds to collector_tokens. Remove a line and restart to revoke a token.")
    metrics_token: Optional[SecretStr] = Field(
        None, description="Bearer token /metrics and /progress require. Unset, and no metrics_token_file: both "
        "are open.")
    metrics_token_file: SecretFile = Field(None, description="File holding the /metrics token.")
    collector_rate_limit_requests: float = Field(
        0, ge=0, description="Requests per second one client (its token, else its IP address) may send to the "
        "collector, bursts of one second's worth allowed; beyond it 429 with Retry-After. 0: no limit.")
    collector_rate_limit_events: float = Field(
        0, ge=0, description="Events per second one client may send to the collector (same rules). 0: no limit.")

    @field_validator("collector_tokens", mode="before")
    @classmethod
    def _join_tokens(cls, value: Any) -> Any:
        return ",".join(value) if isinstance(value, list) else value  # a YAML list reads as the env form

    def collector_token_list(self) -> list[str]:
        """Every accepted collector token: the inline ones, then the file's (read now)."""
        tokens = token_lines(self.collector_tokens.get_secret_value()) if self.collector_tokens else []
        if self.collector_tokens_file is not None:
            from_file = token_lines(read_secret_file(self.collector_tokens_file, self.env_name("collector_tokens_file")))
            if not from_file:
                raise ConfigurationError(f"{self.env_name('collector_tokens_file')} {self.collector_tokens_file} holds "
                                         "no token (only comments or blank lines)")
            tokens += from_file
        return tokens

    @model_validator(mode="after")
    def _check_tokens_file(self) -> "SecuritySettings":
        try:
            self.collector_token_list()
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _check_pii_key(self) -> "SecuritySettings":
        key_variable, file_variable = self.env_name("pii_key"), self.env_name("pii_key_file")
        if self.pii_key is not None and self.pii_key_file is not None:
            raise ValueError(f"set {key_variable} or {file_variable}, not both")
        try:
            key = self.pii_secret()  # a missing key file or a short key fails here, when settings load
        except ValueError as exc:
            raise ValueError(f"{file_variable}: {exc}") from None
        if key is not None and len(key) < PII_MIN_KEY_BYTES:
            where = f"{file_variable} {self.pii_key_file}" if self.pii_key_file else key_variable
            raise ValueError(f"{where}: the PII key has {len(key)} bytes; it needs at least {PII_MIN_KEY_BYTES} bytes, "
                             "e.g. a random one from `openssl rand -base64 32`")
        return self

    def pii_secret(self) -> Optional[bytes]:
        """The PII mode key, or None when PII mode is off."""
        if self.pii_key_file is not None:
            if not self.pii_key_file.is_file():
                raise ValueError(f"{self.pii_key_file} not found")
            return self.pii_key_file.read_bytes().rstrip(b"\r\n")
        return None if self.pii_key is None else self.pii_key.get_secret_value().encode("utf-8")


class StreamSettings(Section):
    """Event time: what a valid event is, how long ids are remembered, the metric windows."""

    windows: Windows = Field([Duration("1h"), Duration("24h"), Duration("7d")],
                             description="Rolling metric windows, by event time (comma-separated).")
    max_future_skew: Duration = Field(Duration("5m"), description="Reject events this far ahead of the worker's wall "
                                      "clock.")
    max_lateness: Duration = Field(Duration("7d"), description="Reject events this far behind the event-time clock of "
                                   "their topic-partition.")
    dedup_horizon: Duration = Field(Duration("24h"), description="An event_id seen again within this event-time span "
                                    "is a duplicate.")
    deadletter_max_bytes: int = Field(
        65_536, ge=1024, le=262_144, description="Bytes of the original key and value kept in a dead letter; longer "
        "ones are truncated and the dead letter says so (truncated, original_size), so it always fits in Kafka.")
    tenants: Names = Field(
        [], description="The tenants the workers accept (comma-separated); an event of any other "
        "tenant is dead-lettered as unknown_tenant, so a typo cannot add series. Empty: every tenant is accepted.")

    @property
    def window_ms(self) -> dict[str, int]:
        """window label (as written) -> milliseconds."""
        return {str(window): window.ms for window in self.windows}


class _FlatSource(PydanticBaseSettingsSource):
    """Flat names (``kafka_url``) from one place, nested into sections (``kafka.url``) for validation."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]):
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # not used: __call__ nests
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return nest(self.settings_cls, self.values)


def nest(settings_cls: Any, flat: dict[str, Any]) -> dict[str, Any]:
    """{"kafka_url": x, "log_level": y, "churn": {...}} -> {"kafka": {"url": x}, "log_level": y, "churn": {...}}.
    An unknown name is kept as it is, so validation names it."""
    index = settings_cls.variable_index()
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        where = index.get(name.lower())
        if where is None:
            nested[name] = value
        elif where[1] is None:
            nested[where[0]] = value
        else:
            nested.setdefault(where[0], {})[where[1]] = value
    return nested


class SettingsError(ValueError):
    """Settings that cannot be used: the message names each ``CXP_`` variable and what is wrong with it,
    never the value (it may be a secret)."""


class BaseSettingsWithSections(BaseSettings):
    # hide_input_in_errors: a bad secret (PII key, a URL with a password) must not be echoed by the error.
    model_config = SettingsConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True)

    config_file: Optional[Path] = Field(None, description="YAML file with any of these settings (keys in lower case).")
    data_dir: Path = Field(Path(".cxp"), description="Folder for local state: embedded ClickHouse, broker, demo logs "
                           "and Faust's data folder.")
    metrics: Names = Field(["all"], description="Metric cores to run (comma-separated: "
                           f"{', '.join(core.name for core in CORE_CLASSES)}), or all.")
    log_level: Annotated[Literal[LOG_LEVELS], BeforeValidator(_lower)] = Field(
        "info", description=f"Log level: {', '.join(LOG_LEVELS)}.")
    log_format: Annotated[Literal["json", "console"], BeforeValidator(_lower)] = Field(
        "json", description="json (one object per line) or console.")
    shutdown_timeout: PositiveDuration = Field(
        Duration("15s"), description="On SIGTERM a worker flushes what it can for at most this long, then exits; "
        "records not yet durable are consumed again after restart.")
    snapshot_interval: PositiveDuration = Field(Duration("10s"), description="Time between metric_snapshots rows of "
                                                "the current metric values.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)

    @field_validator("metrics")
    @classmethod
    def _check_metrics(cls, names: list[str]) -> list[str]:
        """Known cores, and every fact a chosen core consumes published by another chosen core."""
        if not names:
            raise ValueError("list the metric cores to run, or all")
        if "all" in names and len(names) > 1:
            raise ValueError("use all alone, or list the cores without it")
        enabled_classes(names)
        return names

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError("; ".join(self.describe_error(error) for error in
                                          exc.errors(include_input=False, include_url=False))) from None

    @classmethod
    def describe_error(cls, error: Any) -> str:
        """One validation error as ``CXP_NAME: what is wrong``; a section's own check names its variables."""
        message = str(error["msg"]).removeprefix("Value error, ")
        location = error["loc"]
        if len(location) == 1 and location[0] in cls.sections():
            return message
        variable = cls.variable(location)
        if error["type"] == "extra_forbidden":
            close = cls.closest_variable(variable)
            message = "not a setting" + (f"; did you mean {close}?" if close else " (cxp config lists them all)")
        return f"{variable}: {message}"

    @classmethod
    def closest_variable(cls, name: str) -> Optional[str]:
        """The setting a mistyped variable name most likely meant (CXP_TENANT -> CXP_TENANTS), or None."""
        known = [ENV_PREFIX + variable.upper() for variable in cls.variable_index()]
        return next(iter(difflib.get_close_matches(name, known, n=1)), None)

    @classmethod
    def sections(cls) -> dict[str, type[Section]]:
        """Field name -> section class, infrastructure and cores alike, in declaration order."""
        return {name: field.annotation for name, field in cls.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, Section)}

    @classmethod
    def variable_index(cls) -> dict[str, tuple[str, Optional[str]]]:
        """Lower-case variable name without CXP_ -> (top-level field, key in its section or None)."""
        index: dict[str, tuple[str, Optional[str]]] = {
            name: (name, None) for name in cls.model_fields if name not in cls.sections()}
        for section_name, section in cls.sections().items():
            for variable, key in section.variables().items():
                index[variable] = (section_name, key)
        return index

    @classmethod
    def variable(cls, location: tuple) -> str:
        """The CXP_ variable of a validation error's location, e.g. ("kafka", "url") -> CXP_KAFKA_URL."""
        head = str(location[0]) if location else ""
        section = cls.sections().get(head)
        if section is None or len(location) < 2:
            return ENV_PREFIX + head.upper()
        key = str(location[1])
        for variable, field_key in section.variables().items():
            if field_key == key:
                return ENV_PREFIX + variable.upper()
        return ENV_PREFIX + f"{section.prefix}{key}".upper()

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> tuple:
        init = dict(init_settings.init_kwargs)
        env = {name[len(ENV_PREFIX):].lower(): value for name, value in os.environ.items()
               if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX):].lower() in cls.variable_index()}
        sources = [_FlatSource(settings_cls, init), _FlatSource(settings_cls, env)]
        config_file = init.get("config_file") or env.get("config_file")
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"config file {config_file} not found (set by CXP_CONFIG_FILE or --config)")
            try:
                document = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as exc:
                raise SettingsError(f"CXP_CONFIG_FILE: {config_file} is not valid YAML: {exc}") from None
            if not isinstance(document, dict):
                raise FileNotFoundError(f"config file {config_file}: expected a mapping of settings")
            sources.append(_FlatSource(settings_cls, document))
        return tuple(sources)

    def replace(self, **flat: Any) -> "BaseSettingsWithSections":
        """A copy with some settings changed, given by their flat names (``kafka_url=...``), validated again."""
        data = self.model_dump(by_alias=True)
        for key, value in nest(type(self), flat).items():
            if isinstance(value, dict):
                data.setdefault(key, {}).update(value)
            else:
                data[key] = value
        return type(self)(**data)

    def flat(self) -> dict[str, tuple[Any, Optional[str]]]:
        """CXP_ variable -> (current value, description), for ``cxp config``."""
        out: dict[str, tuple[Any, Optional[str]]] = {}
        sections = self.sections()
        for name, field in type(self).model_fields.items():
            if name not in sections:
                out[ENV_PREFIX + name.upper()] = (getattr(self, name), field.description)
                continue
            section = getattr(self, name)
            for variable, key in section.variables().items():
                attribute = next(n for n, f in type(section).model_fields.items() if (f.alias or n) == key)
                out[ENV_PREFIX + variable.upper()] = (getattr(section, attribute),
                                                      type(section).model_fields[attribute].description)
        return out


Settings = create_model(
    "Settings", __base__=BaseSettingsWithSections, __module__=__name__,
    __doc__="Every setting: the general ones, the infrastructure sections, and one section per metric core.",
    **{core.name: (core.Settings, Field(default_factory=core.Settings)) for core in CORE_CLASSES
       if core.Settings is not None})
