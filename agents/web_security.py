"""Who may use the worker's web server: bearer tokens and per-client rate limits.

The collector (``POST /v1/events/{source}``) needs one of the collector tokens when any is set;
``/metrics`` and ``/progress`` need the metrics token when one is set. Tokens are compared in constant time. A client
(its token when authentication is on, else its IP address) gets two token buckets, requests/s and
events/s, that refill continuously and hold one second's worth: a request is refused with 429 until
its bucket holds what it costs. A request with more events than a second's worth needs a full bucket
and then puts it into debt that the client waits off, so big batches pass but not faster on average.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import time
from typing import Any, Callable, Optional

from aiohttp import web

from pipeline.secret_values import display_settings, secret
from pipeline.settings import SecuritySettings, Settings

log = logging.getLogger("cxp.security")
MAX_CLIENTS = 10_000  # buckets kept; full ones (idle clients) are dropped beyond this
# Where check_collector leaves the client's identity on the request, for check_events.
CLIENT_KEY = web.RequestKey("cxp_client", str)
METRICS_PATH = "/metrics"  # Prometheus' page: every series, each core's gauges computed on the spot
PROGRESS_PATH = "/progress"  # the pipeline counters alone, as JSON, cheap enough to poll often
METRICS_PATHS = frozenset({METRICS_PATH, PROGRESS_PATH})  # what the metrics token guards


def metrics_token(settings: SecuritySettings) -> Optional[str]:
    """The /metrics token, or None: an empty value (CXP_METRICS_TOKEN=) leaves /metrics open."""
    return secret(settings.metrics_token, settings.metrics_token_file, "metrics_token_file") or None


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def matching_token(given: Optional[str], tokens: list[str]) -> Optional[str]:
    """The accepted token equal to ``given``. Every token is compared, in constant time on digests of
    equal length, so the answer's timing tells nothing about how much of a token was right, its
    length, or which one matched."""
    if not given:
        return None
    digest = hashlib.sha256(given.encode()).digest()
    found = None
    for token in tokens:
        if hmac.compare_digest(digest, hashlib.sha256(token.encode()).digest()):
            found = token
    return found


def token_identity(token: str) -> str:
    """A client name for a token that does not reveal it (rate-limit key, logs)."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class TokenBucket:
    """``rate`` tokens per second, holding at most ``rate`` (one second's burst); may go into debt."""

    __slots__ = ("rate", "level", "updated")

    def __init__(self, rate: float, now: float):
        self.rate, self.level, self.updated = rate, rate, now

    def refill(self, now: float) -> None:
        self.level = min(self.rate, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_seconds(self, amount: float, now: float) -> float:
        """0 when ``amount`` may be taken now, else the seconds until it may (amounts beyond the
        capacity need a full bucket)."""
        self.refill(now)
        need = min(amount, self.rate)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float, now: float) -> None:
        self.refill(now)
        self.level -= amount


class RateLimiter:
    """Per-client buckets for one limit; 0 means no limit."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.clock = rate, clock
        self.buckets: dict[str, TokenBucket] = {}

    def admit(self, client: str, amount: float = 1) -> float:
        """Take ``amount`` for ``client`` and return 0, or return the seconds to wait (nothing taken)."""
        if not self.rate:
            return 0.0
        now = self.clock()
        bucket = self.buckets.get(client)
        if bucket is None:
            if len(self.buckets) >= MAX_CLIENTS:
                self._forget_idle(now)
            bucket = self.buckets[client] = TokenBucket(self.rate, now)
        wait = bucket.wait_seconds(amount, now)
        if not wait:
            bucket.take(amount, now)
        return wait

    def _forget_idle(self, now: float) -> None:
        """Drop full buckets: a returning client starts full anyway, so nothing changes for it."""
        for client, bucket in list(self.buckets.items()):
            bucket.refill(now)
            if bucket.level >= bucket.rate:
                del self.buckets[client]


class Guard:
    """The web server's access rules, from the settings (tokens are read once, at start-up)."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.monotonic):
        security = settings.security
        self.collector_tokens = security.collector_token_list()
        self.metrics_token = metrics_token(security)
        self.requests = RateLimiter(security.collector_rate_limit_requests, clock)
        self.events = RateLimiter(security.collector_rate_limit_events, clock)

    def check_collector(self, request: Any) -> Optional[web.Response]:
        """The 401 or 429 answer for a collector request, or None to let it through. Remembers who the
        client is for the rate limits: its token's identity, else its peer address."""
        client = f"ip:{request.remote}"
        if self.collector_tokens:
            token = matching_token(bearer_token(request.headers.get("Authorization")), self.collector_tokens)
            if token is None:
                return unauthorized("a valid collector token is required: Authorization: Bearer <token>")
            client = token_identity(token)
        request[CLIENT_KEY] = client
        wait = self.requests.admit(client)
        return too_many(wait, "requests") if wait else None

    def check_events(self, request: Any, count: int) -> Optional[web.Response]:
        """The 429 answer when the client's events/s budget is spent, or None (and ``count`` taken).
        Only for requests :meth:`check_collector` let through."""
        wait = self.events.admit(request[CLIENT_KEY], count)
        return too_many(wait, "events") if wait else None

    def check_metrics(self, request: Any) -> Optional[web.Response]:
        if self.metrics_token is None:
            return None
        if matching_token(bearer_token(request.headers.get("Authorization")), [self.metrics_token]) is None:
            return unauthorized("a valid metrics token is required: Authorization: Bearer <token>")
        return None


def middleware(guard: Guard, collector_prefix: str) -> Any:
    """aiohttp middleware applying ``guard`` to the collector's paths, /metrics and /progress. Installed inside
    the collector's counting middleware, so its 401 and 429 answers are counted like any other."""

    @web.middleware
    async def guard_requests(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(collector_prefix):
            refusal = guard.check_collector(request)
        elif request.path in METRICS_PATHS:
            refusal = guard.check_metrics(request)
        else:
            refusal = None
        return refusal if refusal is not None else await handler(request)

    return guard_requests


def unauthorized(error: str) -> web.Response:
    return web.json_response({"error": error}, status=401, headers={"WWW-Authenticate": 'Bearer realm="cxp"'})


def too_many(wait_s: float, what: str) -> web.Response:
    retry_after = max(1, math.ceil(wait_s))
    return web.json_response({"error": f"rate limit of {what} per second exceeded; retry in {retry_after} s",
                              "retry_after": retry_after}, status=429, headers={"Retry-After": str(retry_after)})


def log_start_up(settings: Settings) -> None:
    """The worker's first lines once its logging is set up: every setting, secrets masked, and the
    warning of :func:`warn_if_exposed`."""
    log.info("worker settings", extra={"settings": display_settings(settings)})
    warn_if_exposed(settings, settings.security.collector_token_list())


def warn_if_exposed(settings: Settings, tokens: list[str]) -> None:
    """Log a warning when the collector is reachable beyond this host and takes anyone's events."""
    if not tokens and not is_loopback(settings.web.host):
        log.warning("the web server binds %s and no collector token is set: anyone who can reach port %s can "
                    "send events. Set CXP_COLLECTOR_TOKENS or CXP_COLLECTOR_TOKENS_FILE (docs/security.md)",
                    settings.web.host, settings.web.port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
