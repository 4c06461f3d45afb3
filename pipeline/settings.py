"""The one settings object: environment variables (prefix ``CXP_``) over an optional YAML file.

Precedence, highest first: explicit arguments, environment, the file named by ``CXP_CONFIG_FILE``,
the defaults below. Every field's description is the documentation (``cxp config`` prints it).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Optional
from urllib.parse import urlparse

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
CHURN_WEIGHTS = {"inactivity": 0.25, "detractor": 0.2, "complaints": 0.2, "downgrade": 0.15, "chatbot": 0.1,
                 "activity_drop": 0.1}
PII_MIN_KEY_BYTES = 16
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# The only names that go into generated SQL unquoted (database, cluster): checked here, once, for every caller.
SQL_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KAFKA_NAME = re.compile(r"[A-Za-z0-9._-]*")  # the characters Kafka allows in topic and group names


def check_identifier(what: str, name: str) -> str:
    """``name`` if it is a plain SQL identifier, else a ValueError that says what is allowed."""
    if not SQL_IDENTIFIER.fullmatch(name):
        raise ValueError(f"invalid {what} {name!r}: use letters, digits and _ (not starting with a digit)")
    return name


def duration_ms(text: str) -> int:
    """'90s', '5m', '24h', '7d' -> milliseconds. A bare number means seconds."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 24h, 7d)")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2) or "s"])


PRIORITIES = ("low", "normal", "high", "urgent")


def sla_targets(text: str) -> dict[str, tuple[int, int]]:
    """'urgent=1h/8h,high=4h/24h,...' -> {priority: (first response ms, resolution ms)}, every priority given."""
    targets = {}
    for item in str(text).split(","):
        priority, _, spans = item.partition("=")
        first, _, resolution = spans.partition("/")
        if priority.strip() not in PRIORITIES or not resolution:
            raise ValueError(f"bad complaint SLA {item!r}: use priority=first_response/resolution, e.g. high=4h/24h")
        targets[priority.strip()] = (duration_ms(first), duration_ms(resolution))
    missing = set(PRIORITIES) - set(targets)
    if missing:
        raise ValueError(f"complaint SLA lacks priorities {sorted(missing)}")
    return targets


class Settings(BaseSettings):
    # hide_input_in_errors: a bad secret (PII key, a URL with a password) must not be echoed by the error.
    model_config = SettingsConfigDict(env_prefix="CXP_", extra="forbid", hide_input_in_errors=True)

    config_file: Optional[Path] = Field(None, description="YAML file with any of these settings (keys in lower case).")
    data_dir: Path = Field(Path(".cxp"), description="Folder for local state: embedded ClickHouse, broker, demo logs and Faust's data folder.")
    kafka_url: Optional[str] = Field(
        None,
        description="Kafka bootstrap servers as kafka://host:port[,host:port]. Unset: `cxp demo` starts a local "
        "Tansu broker; `cxp worker` requires it.",
    )
    schema_registry_url: Optional[str] = Field(
        None, description="Confluent-compatible schema registry URL. Unset: the bundled schemas with fixed ids."
    )
    clickhouse_url: Optional[str] = Field(
        None,
        description="ClickHouse server as clickhouse://user:password@host:9000/cx (native protocol). "
        "Unset: embedded chdb under data_dir/clickhouse.",
    )
    clickhouse_database: str = Field("cx", description="ClickHouse database for all tables.")
    clickhouse_cluster: Optional[str] = Field(
        None,
        description="ClickHouse cluster (a remote_servers name) for cluster mode: replicated `<table>_local` tables "
        "and Distributed tables over them, created ON CLUSTER; inserts wait for every replica of the shard. "
        "Unset: one server.")
    topic_prefix: str = Field("cx.", description="Prefix of every topic name (cx.events.web, cx.deadletter, ...).")
    partitions: int = Field(4, ge=1, description="Partitions per input topic when cx-pipeline creates the topics.")
    topic_replication_factor: int = Field(
        1, ge=1, description="Replicas of each topic cx-pipeline creates (3 on a three-broker cluster; the brokers' "
        "min.insync.replicas decides how many must acknowledge a write).")
    app_id: str = Field("cx-pipeline", description="Faust application id: the consumer group of the workers.")
    web_host: str = Field("127.0.0.1", description="Address the worker's web server (/metrics, collector) binds.")
    web_port: int = Field(6066, description="Port of the worker's web server. Give each worker on a host its own.")
    windows: Annotated[list[str], NoDecode] = Field(
        ["1h", "24h", "7d"], description="Rolling metric windows, by event time (comma-separated)."
    )
    max_future_skew: str = Field("5m", description="Reject events this far ahead of the worker's wall clock.")
    max_lateness: str = Field("7d", description="Reject events this far behind the worker's event-time clock.")
    dedup_horizon: str = Field("24h", description="An event_id seen again within this event-time span is a duplicate.")
    funnels_file: Path = Field(
        Path(__file__).with_name("funnels.yaml"),
        description="YAML file of the conversion funnels (steps, filters, window). Default: the bundled purchase funnel.",
    )
    batch_max_messages: int = Field(100, ge=1, description="Kafka messages the worker processes per batch.")
    batch_within: float = Field(0.2, gt=0, description="Seconds the worker waits to fill a batch before processing it.")
    sink_batch_rows: int = Field(50_000, ge=1, description="Buffered rows that trigger a ClickHouse flush.")
    sink_flush_interval: float = Field(
        1.0, gt=0, description="Seconds after which buffered rows are flushed even if the batch is not full."
    )
    sink_retry_backoff: float = Field(
        0.2, gt=0, description="First delay in seconds before a failed delivery (ClickHouse insert or topic send) is "
        "retried; it doubles per failure up to sink_retry_max_backoff. Input is held back meanwhile, never dropped.")
    sink_retry_max_backoff: float = Field(10.0, gt=0, description="Longest delay between delivery retries, in seconds.")
    clickhouse_connect_timeout: float = Field(3.0, gt=0, description="Seconds to wait for a ClickHouse connection.")
    clickhouse_timeout: float = Field(
        10.0, gt=0, description="Seconds a ClickHouse insert or query may wait on the socket before it counts as a "
        "sink error and is retried (a hung server shows up in cxp_sink_errors_total).")
    shutdown_timeout: float = Field(
        15.0, gt=0, description="On SIGTERM a worker flushes what it can for at most this many seconds, then exits; "
        "records not yet durable are consumed again after restart.")
    deadletter_max_bytes: int = Field(
        65_536, ge=1024, le=262_144, description="Bytes of the original key and value kept in a dead letter; longer "
        "ones are truncated and the dead letter says so (truncated, original_size), so it always fits in Kafka.")
    segment_dimensions: Annotated[list[str], NoDecode] = Field(
        ["region", "plan", "source"], description="Segment breakdowns of NPS/CSAT/CES: attribute keys of the events, "
        "and `source` (comma-separated).")
    segment_max_values: int = Field(
        20, ge=1, description="Segments exported per tenant and dimension (those with most responses); the rest are "
        "summed as `other`, so a customer-supplied attribute can't explode the series count.")
    complaint_sla: str = Field(
        "urgent=1h/8h,high=4h/24h,normal=24h/72h,low=72h/7d", description="Complaint SLA targets per priority: "
        "first response / resolution, counted from `opened` by event time (priority=first/resolution, comma-separated).")
    complaint_category_max_values: int = Field(
        20, ge=1, description="Complaint categories a worker labels by name per tenant in cx_complaints_opened_total "
        "(the first ones seen); later categories count as `other`.")
    complaint_max_events: int = Field(
        64, ge=4, description="Events kept per complaint to recompute its state when events arrive out of order; "
        "beyond that the oldest are folded into the state.")
    spike_bucket: str = Field("1h", description="Complaint spike detection: width of the event-time bucket whose "
                              "opened count is tested against the baseline.")
    spike_alpha: float = Field(1e-4, gt=0, lt=1, description="Complaint spike: flag when the Poisson tail "
                               "P(X >= opened | baseline) is below this.")
    spike_min_count: int = Field(5, ge=1, description="Complaint spike: never flag a bucket with fewer openings.")
    spike_min_ratio: float = Field(2.0, ge=1, description="Complaint spike: never flag a bucket with fewer than "
                                   "this many times the baseline openings.")
    spike_weeks: int = Field(4, ge=1, description="Complaint spike: weeks of same-hour-of-week history in the "
                             "baseline (an EWMA of recent buckets stands in while history is shorter).")
    metrics: Annotated[list[str], NoDecode] = Field(
        ["all"], description="Metric cores to run (comma-separated: surveys, ...), or all.")
    engagement_windows: Annotated[list[str], NoDecode] = Field(
        ["1d", "7d", "30d"], description="Windows of cx_active_customers and cx_complaint_customers, by event time "
        "(comma-separated). Stickiness (DAU/MAU) always uses 1d and 30d.")
    churn_weights: Annotated[dict[str, float], NoDecode] = Field(
        CHURN_WEIGHTS, description="Weight of each churn signal (signal=weight, comma-separated; signals not "
        "listed keep their default); the score is the sum of the weights of the signals present, at most 1.")
    churn_medium: float = Field(0.3, ge=0, le=1, description="Churn score from which a customer's level is medium.")
    churn_high: float = Field(0.5, ge=0, le=1, description="Churn score from which a customer's level is high.")
    churn_inactivity: str = Field("14d", description="No event for this long (event time) is the inactivity signal.")
    churn_memory: str = Field(
        "30d", description="How long a detractor answer, complaint, SLA breach, downgrade or chatbot problem "
        "counts towards the churn score.")
    churn_handoff_timeout: str = Field(
        "24h", description="A chatbot handoff not followed by a resolved conversation within this time is a signal.")
    churn_activity_drop: float = Field(
        0.5, gt=0, lt=1, description="Activity-drop signal: active days in the last 7 full days below this share of "
        "the weekly mean of the 3 weeks before (which must be at least 2 days a week).")
    churn_forget: str = Field(
        "90d", description="A customer without any event for this long is dropped from churn state and gauges.")
    followup_due: str = Field("48h", description="Due time of a detractor_followup action after the answer.")
    followup_recovery_window: str = Field(
        "30d", description="Detractor follow-ups in this window count towards cx_detractor_followups (recovery).")
    snapshot_interval: float = Field(
        10.0, gt=0, description="Seconds between metric_snapshots rows of the current metric values."
    )
    session_timeout: float = Field(
        10.0, gt=0, description="Kafka consumer-group session timeout in seconds (group joins take about half)."
    )
    collector_max_body: int = Field(
        1_048_576, ge=1, le=1_048_576, description="Largest HTTP collector request body in bytes (at most 1 MiB, the web server's own cap)."
    )
    max_message_bytes: int = Field(
        900_000, ge=1_000, le=990_000,
        description="Largest Kafka message (key + value) the collector writes; a request's events are split into "
        "as many batch messages as this needs. Stays under the producer's 1,000,000-byte request limit.",
    )
    collector_send_timeout: float = Field(
        30.0, gt=0, description="Seconds the collector waits for Kafka to take a request's messages before a 503."
    )
    pii_key: Optional[SecretStr] = Field(
        None, description="PII mode: with this secret (at least 16 bytes) set, customer, anonymous, session and CRM "
        "account ids are replaced by their keyed hash in the worker. Never shown; prefer pii_key_file.")
    pii_key_file: Optional[Path] = Field(
        None, description="File holding the PII mode key (its bytes, without a trailing newline); instead of pii_key.")
    pii_drop_text: bool = Field(
        True, description="In PII mode, drop survey comments and chatbot text (true) or keep them (false).")
    pii_cache_size: int = Field(
        100_000, ge=0, description="In PII mode, ids whose hash is cached (the most recently seen).")
    collector_tokens: Optional[SecretStr] = Field(
        None, description="Bearer tokens the collector accepts (comma-separated; several at once for rotation). "
        "Unset, and no collector_tokens_file: the collector takes requests without a token.")
    collector_tokens_file: Optional[Path] = Field(
        None, description="File of collector tokens, one per line (# comments allowed), read at start-up; "
        "adds to collector_tokens. Remove a line and restart to revoke a token.")
    metrics_token: Optional[SecretStr] = Field(
        None, description="Bearer token /metrics requires. Unset, and no metrics_token_file: /metrics is open.")
    metrics_token_file: Optional[Path] = Field(None, description="File holding the /metrics token.")
    collector_rate_limit_requests: float = Field(
        0, ge=0, description="Requests per second one client (its token, else its IP address) may send to the "
        "collector, bursts of one second's worth allowed; beyond it 429 with Retry-After. 0: no limit.")
    collector_rate_limit_events: float = Field(
        0, ge=0, description="Events per second one client may send to the collector (same rules). 0: no limit.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol of every client (worker, producer, topic admin).")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism, with kafka_security_protocol SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_username: Optional[str] = Field(None, description="SASL user name.")
    kafka_sasl_password: Optional[SecretStr] = Field(None, description="SASL password.")
    kafka_sasl_password_file: Optional[Path] = Field(None, description="File holding the SASL password.")
    kafka_ssl_cafile: Optional[Path] = Field(
        None, description="CA certificates (PEM) to verify the brokers with, for SSL/SASL_SSL. Unset: the system's.")
    kafka_ssl_certfile: Optional[Path] = Field(None, description="Client certificate (PEM) for mutual TLS.")
    kafka_ssl_keyfile: Optional[Path] = Field(None, description="Private key (PEM) of the client certificate.")
    clickhouse_password_file: Optional[Path] = Field(
        None, description="File holding the ClickHouse password; overrides a password in clickhouse_url.")
    clickhouse_secure: bool = Field(
        False, description="Connect to ClickHouse over TLS (as a clickhouses:// URL does; port 9440 usually).")
    clickhouse_ca_file: Optional[Path] = Field(
        None, description="CA certificates (PEM) to verify the ClickHouse server with. Unset: the system's.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    log_format: str = Field("json", description="json (one object per line) or console.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = [init_settings, env_settings]
        config_file = init_settings.init_kwargs.get("config_file") or env_settings().get("config_file")
        if config_file:
            if not Path(config_file).is_file():
                raise FileNotFoundError(f"config file {config_file} not found (set by CXP_CONFIG_FILE or --config)")
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    @field_validator("churn_weights", mode="before")
    @classmethod
    def _parse_weights(cls, value):
        if isinstance(value, str):
            pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError(f"churn_weights must look like inactivity=0.25,detractor=0.2, got {value!r}")
            value = {name.strip(): float(weight) for name, weight in pairs}
        return {**CHURN_WEIGHTS, **value}

    @field_validator("windows", "metrics", "segment_dimensions", "engagement_windows", mode="before")
    @classmethod
    def _split_lists(cls, value):
        return [w.strip() for w in value.split(",")] if isinstance(value, str) else value

    @field_validator("complaint_sla")
    @classmethod
    def _check_sla(cls, value):
        sla_targets(value)
        return value

    @field_validator("windows", "max_future_skew", "max_lateness", "dedup_horizon", "spike_bucket",
                     "engagement_windows", "churn_inactivity", "churn_memory", "churn_handoff_timeout", "churn_forget",
                     "followup_due", "followup_recovery_window")
    @classmethod
    def _check_duration(cls, value):
        for item in value if isinstance(value, list) else [value]:
            duration_ms(item)
        return value

    @field_validator("clickhouse_database", "clickhouse_cluster")
    @classmethod
    def _check_sql_identifier(cls, value, info):
        return value if value is None else check_identifier(info.field_name, value)

    @field_validator("topic_prefix", "app_id")
    @classmethod
    def _check_kafka_name(cls, value, info):
        if not KAFKA_NAME.fullmatch(value):
            raise ValueError(f"invalid {info.field_name} {value!r}: Kafka names use only letters, digits, . _ -")
        return value

    @field_validator("clickhouse_url")
    @classmethod
    def _check_clickhouse_url(cls, value):
        if value is None:
            return value
        parsed = urlparse(value)
        if parsed.scheme not in ("clickhouse", "clickhouses"):
            raise ValueError("clickhouse_url must look like clickhouse://user:password@host:9000/cx "
                             "(clickhouses:// for TLS)")
        database = parsed.path.strip("/")
        if database:
            check_identifier("database in clickhouse_url", database)
        return value

    @field_validator("collector_tokens", mode="before")
    @classmethod
    def _join_tokens(cls, value):
        return ",".join(value) if isinstance(value, list) else value  # a YAML list reads as the env form

    @field_validator("kafka_url")
    @classmethod
    def _check_kafka_url(cls, value):
        if value and urlparse(value).scheme not in ("kafka", ""):
            raise ValueError(f"kafka_url must look like kafka://host:9092, not {urlparse(value).scheme}://...")
        return value

    @model_validator(mode="after")
    def _check_pii_key(self):
        if self.pii_key is not None and self.pii_key_file is not None:
            raise ValueError("set pii_key or pii_key_file, not both")
        key = self.pii_secret()  # a missing key file or a short key fails here, when settings load
        if key is not None and len(key) < PII_MIN_KEY_BYTES:
            raise ValueError(f"the PII key must have at least {PII_MIN_KEY_BYTES} bytes, got {len(key)}")
        return self

    def pii_secret(self) -> Optional[bytes]:
        """The PII mode key, or None when PII mode is off."""
        if self.pii_key_file is not None:
            if not self.pii_key_file.is_file():
                raise ValueError(f"pii_key_file {self.pii_key_file} not found")
            return self.pii_key_file.read_bytes().rstrip(b"\r\n")
        return None if self.pii_key is None else self.pii_key.get_secret_value().encode("utf-8")

    @property
    def bootstrap_servers(self) -> str:
        """host:port[,host:port] from kafka_url."""
        if not self.kafka_url:
            raise ValueError("no Kafka configured: set CXP_KAFKA_URL=kafka://host:9092 (or run `cxp demo`)")
        return self.kafka_url.split("://", 1)[-1].rstrip("/")

    @property
    def window_ms(self) -> dict[str, int]:
        return {label: duration_ms(label) for label in self.windows}

    def topic(self, name: str) -> str:
        """Full topic name: topic('events.web') -> 'cx.events.web'."""
        return f"{self.topic_prefix}{name}"
