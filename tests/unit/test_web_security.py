"""Collector and /metrics access rules: token parsing and matching, token buckets on a fake clock,
and the middleware's 401/429 answers through a real aiohttp server."""
from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pipeline.settings import Settings, SettingsError
from agents.web_security import (
    Guard,
    RateLimiter,
    bearer_token,
    matching_token,
    middleware,
    token_identity,
    warn_if_exposed,
)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bearer_header_parsing():
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token("Bearer") is None and bearer_token(None) is None


def test_every_listed_token_matches_and_nothing_else():
    tokens = ["old-token", "new-token"]
    assert matching_token("old-token", tokens) == "old-token" and matching_token("new-token", tokens) == "new-token"
    for wrong in ("", None, "old-toke", "old-tokenX", "OLD-TOKEN", "new-token\n"):
        assert matching_token(wrong, tokens) is None
    assert token_identity("old-token") != token_identity("new-token") and "old" not in token_identity("old-token")


def test_tokens_from_setting_and_file_and_unreadable_file(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# rotated 2026-11\nfile-one\n\n  file-two  # the new one\n")
    settings = Settings(collector_tokens="env-one, env-two", collector_tokens_file=path)
    assert settings.security.collector_token_list() == ["env-one", "env-two", "file-one", "file-two"]
    # refused when the settings load, naming the variable
    with pytest.raises(SettingsError, match="CXP_COLLECTOR_TOKENS_FILE: cannot read .*missing"):
        Settings(collector_tokens_file=tmp_path / "missing")
    path.write_text("# nothing but a comment\n")
    with pytest.raises(SettingsError, match="CXP_COLLECTOR_TOKENS_FILE .* holds no token"):
        Settings(collector_tokens_file=path)


def test_requests_bucket_allows_a_second_of_burst_then_refills():
    clock = FakeClock()
    limiter = RateLimiter(5, clock)
    assert [limiter.admit("a") for _ in range(5)] == [0.0] * 5
    wait = limiter.admit("a")
    assert wait == pytest.approx(0.2)  # one request's worth of refill at 5/s
    assert limiter.admit("b") == 0.0  # per client
    clock.now += wait
    assert limiter.admit("a") == 0.0 and limiter.admit("a") > 0


def test_a_big_batch_passes_once_then_its_debt_is_waited_off():
    clock = FakeClock()
    limiter = RateLimiter(100, clock)
    assert limiter.admit("a", 450) == 0.0  # more than a second's worth: allowed, the bucket goes to -350
    assert limiter.admit("a", 1) == pytest.approx(3.51)  # until the bucket holds one event again
    clock.now += 3.5
    assert limiter.admit("a", 1) > 0
    clock.now += 0.02
    assert limiter.admit("a", 1) == 0.0
    assert limiter.admit("a", 450) == pytest.approx(0.99)  # another big batch waits for a full bucket


def test_zero_means_no_limit_and_idle_clients_are_forgotten(monkeypatch):
    assert all(RateLimiter(0).admit("a", 10**9) == 0.0 for _ in range(1000))
    monkeypatch.setattr("agents.web_security.MAX_CLIENTS", 3)
    clock = FakeClock()
    limiter = RateLimiter(1, clock)
    for client in "abc":
        limiter.admit(client)
    clock.now += 2  # all full again
    limiter.admit("d")
    assert set(limiter.buckets) == {"d"}


def run_app(guard: Guard, exchange) -> None:
    """Serve a collector-like path and /metrics behind the guard on a real aiohttp server."""

    async def accept(request: web.Request) -> web.Response:
        refusal = guard.check_events(request, int(request.query.get("events", "1")))
        return refusal or web.json_response({"accepted": True}, status=202)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="cxp_up 1\n")

    async def main() -> None:
        app = web.Application(middlewares=[middleware(guard, "/v1/events/")])
        app.router.add_post("/v1/events/{source}", accept)
        app.router.add_get("/metrics", metrics)
        async with TestClient(TestServer(app)) as client:
            await exchange(client)

    asyncio.run(main())


def test_collector_needs_a_listed_token_and_metrics_its_own():
    guard = Guard(Settings(collector_tokens="t-one,t-two", metrics_token="m-token"))
    answers = []

    async def exchange(client):
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic t-one"},
                        {"Authorization": "Bearer t-one"}, {"Authorization": "Bearer t-two"},
                        {"Authorization": "Bearer m-token"}):
            response = await client.post("/v1/events/web", headers=headers)
            answers.append((response.status, response.headers.get("WWW-Authenticate"), await response.json()))
        for headers in ({}, {"Authorization": "Bearer t-one"}, {"Authorization": "Bearer m-token"}):
            response = await client.get("/metrics", headers=headers)
            answers.append((response.status, response.headers.get("WWW-Authenticate"), None))

    run_app(guard, exchange)
    statuses = [status for status, _, _ in answers]
    assert statuses == [401, 401, 401, 202, 202, 401, 401, 401, 200]
    assert all(challenge.startswith("Bearer") for status, challenge, _ in answers if status == 401)
    assert "token" in answers[0][2]["error"]


def test_metrics_stays_open_without_a_metrics_token():
    statuses = []

    async def exchange(client):
        statuses.append((await client.get("/metrics")).status)
        statuses.append((await client.post("/v1/events/web")).status)

    run_app(Guard(Settings()), exchange)
    run_app(Guard(Settings(metrics_token="", collector_tokens="")), exchange)  # empty variables: still open
    assert statuses == [200, 202, 200, 202]


def test_rate_limits_answer_429_with_retry_after_per_token():
    clock = FakeClock()
    guard = Guard(Settings(collector_tokens="a,b", collector_rate_limit_requests=2, collector_rate_limit_events=10),
                  clock)
    answers = []

    async def exchange(client):
        async def post(token, events=1):
            response = await client.post(f"/v1/events/web?events={events}", headers={"Authorization": f"Bearer {token}"})
            answers.append((token, response.status, response.headers.get("Retry-After"), await response.json()))

        await post("a")
        await post("a")
        await post("a")  # third request within the same instant: over 2/s
        await post("b", events=25)  # b's own buckets: passes, events bucket now owes 15
        clock.now += 1.0
        await post("b")  # requests bucket refilled, events bucket still owes 5 -> 429
        clock.now += 1.0
        await post("a")  # a recovered

    run_app(guard, exchange)
    assert [(token, status) for token, status, _, _ in answers] == [
        ("a", 202), ("a", 202), ("a", 429), ("b", 202), ("b", 429), ("a", 202)]
    _, _, retry_after, body = answers[2]
    assert retry_after == "1" and body["retry_after"] == 1 and "requests" in body["error"]
    _, _, retry_after, body = answers[4]
    assert int(retry_after) == 1 and "events" in body["error"]


def test_exposed_web_server_without_tokens_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="cxp.security"):
        warn_if_exposed(Settings(web_host="127.0.0.1"), [])
        warn_if_exposed(Settings(web_host="::1"), [])
        warn_if_exposed(Settings(web_host="0.0.0.0"), ["t"])
        assert not caplog.records
        warn_if_exposed(Settings(web_host="0.0.0.0"), [])
    assert len(caplog.records) == 1 and "CXP_COLLECTOR_TOKENS" in caplog.records[0].getMessage()
