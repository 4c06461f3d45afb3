"""Conversion funnels per customer, step for step what ClickHouse's ``windowFunnel`` computes.

Reading of the definition (docs/metrics.md, "Conversion funnels", says it for analysts):

* A customer's events are taken in time order; events with the same millisecond in ``event_id``
  order. One event that matches several steps is one position in that order, so it can serve as
  any one of them in an attempt, never as two steps of the same attempt.
* Every step-1 event starts an **attempt**. Its level is how many steps the customer then did in
  order, each after the previous one, the last no later than ``window`` after the step-1 event.
  Greedy earliest matching is optimal for a fixed start, and the customer's level is the best
  attempt's: this is windowFunnel (ClickHouse keeps the latest start of each level; same answer).
  Attempts starting in the same millisecond are one attempt (the best of them).
* Window W at clock C counts a customer at step k when an attempt started in the window
  (``start // 60000 > (C - W) // 60000``) reached step k; equal to windowFunnel over the
  customer's events in the window, because an attempt only uses events after its start.
* A **conversion** is a last-step event that completes at least one attempt. It is observed once,
  when first seen, as the time from the latest step-1 event it completes (the last restart), so
  restarts and replays never add a second conversion for the same purchase.

State per customer and funnel: the matching step events not older than what a new event (at
most ``max_lateness`` behind the clock) or a metric window can still reach, the attempts starting
there, and the ids of already observed conversions; it expires with them.
"""
from __future__ import annotations

import heapq
import sys
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path
from typing import Iterable, Optional, Sequence

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from pydantic import Field, field_validator

from pipeline.config import Section
from pipeline.dedup import EventIdKey, id_before, id_key
from pipeline.metrics.base import Batch, Instrument, MetricCore, Newest, NotNull, OneOf, Output, Restore
from pipeline.metrics.funnel_defs import EXCLUDED, Funnel, load_funnels

BUCKET_MS = 60_000
CONVERSION_SECONDS = "cx_funnel_conversion_seconds"
_LADDER_S = (10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800, 345600, 604800)


_NONE: list = []  # a new track's events and attempts until its first one (no empty list object per track): never
# added to, replaced by a list of its own first


def conversion_buckets(funnels: Sequence[Funnel]) -> tuple[float, ...]:
    """10 s up to the longest conversion window (the last bucket is that window itself)."""
    longest = max(funnel.window_ms for funnel in funnels) / 1000
    return tuple(float(b) for b in _LADDER_S if b < longest) + (longest,)


class _Track:
    """One customer in one funnel, in a few flat containers (no object per event or attempt part):

    * ``events``: one flat list ``[ms, id key, step mask, ms, id key, step mask, ...]`` in funnel order (time,
      then event id); code addresses an event by its *position*, the index of its ms (a multiple of 3); an id key
      is :func:`~pipeline.dedup.id_key` of the event id (ids are only compared here, never written);
    * ``attempts``: one flat list of ``width`` numbers per attempt (the funnel's steps + 2), sorted by start:
      ``[start_ms, level, last row version, step-2 ms, ..., step-n ms, ...]`` (step 1's time is the start; the
      steps past the level are 0); code addresses an attempt by its position, a multiple of ``width``. A restored
      version without its events yet has level 0.
    """

    __slots__ = ("key", "events", "attempts", "width", "converted", "counted")

    def __init__(self, key: tuple[str, str, int], width: int):
        self.key = key  # (tenant, customer, funnel index): the one tuple the state's indexes share
        self.events: list = _NONE
        self.attempts: list[int] = _NONE
        self.width = width
        self.converted: Optional[tuple[EventIdKey, ...]] = None  # id keys of last-step events already observed
        self.counted = 0  # its level in each metric window as counted in FunnelState.reached (FunnelCore._pack)

    def oldest_ms(self) -> Optional[int]:
        """Time of the oldest event or attempt held; None when empty."""
        if self.events:
            return min(self.events[0], self.attempts[0]) if self.attempts else self.events[0]
        return self.attempts[0] if self.attempts else None

    def position(self, ms: int) -> int:
        """Position of the first event at or after ``ms`` (len(events) if none)."""
        events = self.events
        lo, hi = 0, len(events) // 3
        while lo < hi:
            mid = (lo + hi) >> 1
            if events[3 * mid] < ms:
                lo = mid + 1
            else:
                hi = mid
        return 3 * lo

    def insert(self, event_ms: int, event_id: EventIdKey, mask: int) -> bool:
        """Add one step event (its id key); False if this event id is already here (a replay)."""
        events = self.events
        n = len(events)
        if not n:
            self.events = [event_ms, event_id, mask]
            return True
        if events[n - 3] < event_ms or (events[n - 3] == event_ms and id_before(events[n - 2], event_id)):
            events += (event_ms, event_id, mask)  # the usual case: after every event held
            return True
        lo, hi = 0, n // 3  # the first event at or after (event_ms, event_id)
        while lo < hi:
            mid = (lo + hi) >> 1
            ms = events[3 * mid]
            if ms < event_ms or (ms == event_ms and id_before(events[3 * mid + 1], event_id)):
                lo = mid + 1
            else:
                hi = mid
        p = 3 * lo
        if p < n and events[p + 1] == event_id:
            return False
        events[p:p] = (event_ms, event_id, mask)
        return True

    def append(self, items: list) -> bool:
        """Add a batch's step events (flat, as ``events``) when each is after every event held and the one
        before it; False (nothing added) otherwise."""
        events = self.events
        last_ms, last_id = (events[-3], events[-2]) if events else (None, None)
        for i in range(0, len(items), 3):
            ms, event_id = items[i], items[i + 1]
            if last_ms is not None and (ms < last_ms or (ms == last_ms and not id_before(last_id, event_id))):
                return False
            last_ms, last_id = ms, event_id
        if events:
            events += items
        else:
            self.events = items
        return True

    def chain(self, p: int, steps: int, window_ms: int) -> list[int]:
        """Positions of the greedy earliest attempt from the step-1 event at p; an exclusion event before
        the next step ends it (every later attempt from p would have it between two steps)."""
        events = self.events
        limit = events[p] + window_ms
        chain, level = [p], 1
        for q in range(p + 3, len(events), 3):
            if events[q] > limit or level == steps:
                break
            mask = events[q + 2]
            if mask >> level & 1:
                chain.append(q)
                level += 1
            elif mask & EXCLUDED:
                break
        return chain

    def since(self, start_ms: int) -> int:
        """Position of the first attempt starting at or after ``start_ms`` (len(attempts) if none)."""
        attempts, width = self.attempts, self.width
        lo, hi = 0, len(attempts) // width
        while lo < hi:
            mid = (lo + hi) >> 1
            if attempts[width * mid] < start_ms:
                lo = mid + 1
            else:
                hi = mid
        return width * lo

    def with_attempt(self, p: int, attempt: list[int]) -> list[int]:
        """The attempts with ``attempt`` inserted at position p, in a new list of exactly their size: a track holds
        a few attempts, which an insertion in place would leave in a list with room for twice as many."""
        attempts = self.attempts
        return attempt if not attempts else attempts + attempt if p == len(attempts) else \
            attempts[:p] + attempt + attempts[p:]

    def attempt(self, start_ms: int) -> Optional[int]:
        """Position in ``attempts`` of the attempt starting at ``start_ms``, or None."""
        p = self.since(start_ms)
        return p if p < len(self.attempts) and self.attempts[p] == start_ms else None

    def level_since(self, first_ms: int) -> int:
        """Best level of the attempts starting at or after first_ms."""
        return max(self.attempts[self.since(first_ms) + 1::self.width], default=0)

    def levels_since(self, firsts: Sequence[int]) -> list[int]:
        """level_since of each of ``firsts`` (one pass from the latest attempt back: each attempt is read once)."""
        attempts, width, levels, best, end = self.attempts, self.width, {}, 0, len(self.attempts)
        for first_ms in sorted(firsts, reverse=True):
            p = self.since(first_ms)
            if p < end:
                best = max(best, max(attempts[p + 1:end:width]))
                end = p
            levels[first_ms] = best
        return [levels[first_ms] for first_ms in firsts]


@dataclass
class FunnelState:
    tracks: dict[tuple[str, str, int], _Track] = field(default_factory=dict)  # (tenant, customer, funnel index)
    # (oldest time held, key): one entry per track, so expiry visits only tracks that hold expired items
    # (an event that arrives later than its track's entry is dropped a little later, never early)
    expiry: list[tuple[int, tuple[str, str, int]]] = field(default_factory=list)
    clock_ms: int = 0
    partition: int = 0
    # The gauge, kept up to date as attempts change and the windows move, so that a scrape reads it and
    # never the tracks: (tenant, funnel index) -> per metric window, customers at >= step 1..n, counted at
    # the windows' first milliseconds ``firsts`` (FunnelCore._firsts); ``tracked``: tracks per (tenant, index)
    reached: dict[tuple[str, int], list[list[int]]] = field(default_factory=dict)
    tracked: dict[tuple[str, int], int] = field(default_factory=dict)
    firsts: tuple[int, ...] = ()
    # start minute -> keys of tracks with an attempt starting then: the tracks a moving window boundary passes
    starts: dict[int, list[tuple[str, str, int]]] = field(default_factory=dict)

    def track(self, key: tuple[str, str, int], first_ms: int, funnel: Funnel) -> _Track:
        track = self.tracks.get(key)
        if track is None:
            key = (sys.intern(key[0]), key[1], key[2])  # a tenant's name once, not once per customer
            # an attempt: start, level, row version, then the times of steps 2..n
            track = self.tracks[key] = _Track(key, len(funnel.steps) + 2)
            heapq.heappush(self.expiry, (first_ms, key))
            self.tracked[key[0], key[2]] = self.tracked.get((key[0], key[2]), 0) + 1
        return track

    def started(self, key: tuple[str, str, int], starts: Iterable[int]) -> None:
        """Note new attempts of the track ``key`` (their start times), for the window boundaries to find (none
        will, when one starts before every window: boundaries only move on). A minute lists a track once for its
        attempts noted one after another."""
        oldest, by_minute = min(self.firsts), self.starts
        for start_ms in starts:
            if start_ms >= oldest:
                keys = by_minute.get(start_ms // BUCKET_MS)
                if keys is None:
                    by_minute[start_ms // BUCKET_MS] = [key]
                elif keys[-1] is not key:
                    keys.append(key)


class FunnelSettings(Section):
    prefix = "funnels_"
    file: Path = Field(
        Path(__file__).parent.parent / "funnels.yaml",
        description="YAML file of the conversion funnels (steps, filters, window). Default: the bundled purchase funnel.")

    @field_validator("file")
    @classmethod
    def _check(cls, path: Path) -> Path:
        load_funnels(path)  # a bad definition fails when the settings load, naming the funnel and the step
        return path


class FunnelCore(MetricCore[FunnelState]):
    name = "funnels"
    Settings = FunnelSettings
    tables = ("funnel_progress",)

    def __init__(self, funnels: Sequence[Funnel], windows_ms: dict[str, int], max_lateness_ms: int):
        self.funnels = tuple(funnels)
        self.windows_ms = dict(windows_ms)
        self.max_lateness_ms = max_lateness_ms
        self.instruments = (Instrument(
            CONVERSION_SECONDS, "histogram", "Time from the latest step-1 event to the last step, per conversion.",
            ("tenant", "funnel"), conversion_buckets(self.funnels)),)
        self._event_types = {step.event_type for funnel in self.funnels for step in funnel.steps + funnel.exclusions}
        # event type -> [(funnel index, its mask when constant else 0, ((mask bit, step), ...))]: an event is
        # matched only against the steps and exclusions of its own type, in the funnels that have any (same mask
        # as Funnel.step_mask)
        dispatch: dict[str, list] = {}
        for index, funnel in enumerate(self.funnels):
            checks: dict[str, list] = {}
            for bit, step in [(1 << i, step) for i, step in enumerate(funnel.steps)] + [
                    (EXCLUDED, exclusion) for exclusion in funnel.exclusions]:
                checks.setdefault(step.event_type, []).append((bit, step))
            for event_type, candidates in checks.items():
                # a step of this type without source or attribute conditions matches every event of it
                constant = 0 if any(step.source or step.where for _, step in candidates) else \
                    sum(bit for bit, _ in candidates)
                dispatch.setdefault(event_type, []).append((index, constant, tuple(candidates)))
        self._dispatch = dispatch
        self.longest_window_ms = max(funnel.window_ms for funnel in self.funnels)
        self._level_bits = max(len(funnel.steps) for funnel in self.funnels).bit_length()

    @classmethod
    def configure(cls, section: FunnelSettings, stream) -> "FunnelCore":
        """The worker's core; a bad funnels file raises FunnelConfigError here, at start-up."""
        return cls(load_funnels(section.file), stream.window_ms, stream.max_lateness.ms)

    def new_state(self, partition: int) -> FunnelState:
        return FunnelState(partition=partition, firsts=self._firsts(0))

    # -- input ------------------------------------------------------------------------------
    @staticmethod
    def _mask(candidates: tuple, source: str, event: dict) -> int:
        """The step mask of an event of the candidates' event type (Funnel.step_mask, pre-filtered by type)."""
        mask = 0
        for bit, step in candidates:
            if step.fits(source, event):
                mask |= bit
        return mask

    def add(self, state: FunnelState, batch: Batch, out: Output) -> None:
        # The batch's step events grouped by track, in arrival order: each track is then reassessed once per
        # batch (per interval of start times its events can change), not once per event.
        pending: dict[tuple[str, str, int], list] = {}
        dispatch, mask_of, clock = self._dispatch, self._mask, state.clock_ms
        events, sources = batch.events, batch.sources
        # the positions of the events of a step's or an exclusion's type, picked in C (most events are of none)
        for i in compress(range(len(events)), map(dispatch.__contains__, map(dict.get, events, repeat("event_type")))):
            event = events[i]
            customer = event.get("customer_id")
            if customer is None:
                continue
            funnels = dispatch[event["event_type"]]
            source = sources[i]
            event_ms = event["event_time"]
            if event_ms > clock:
                clock = event_ms
            for index, constant, candidates in funnels:
                mask = constant or mask_of(candidates, source, event)
                if mask:
                    key = (event["tenant"], customer, index)
                    items = pending.get(key)
                    if items is None:
                        pending[key] = [event_ms, id_key(event["event_id"]), mask]
                    else:
                        items += (event_ms, id_key(event["event_id"]), mask)
        state.clock_ms = clock
        tracks, funnels = state.tracks, self.funnels
        for key, items in pending.items():
            funnel = funnels[key[2]]
            track = tracks.get(key) or state.track(key, items[0], funnel)
            if track.append(items):
                # events after every one held only extend chains: no attempt's level falls, so the gauge's
                # counts move by the changed attempts alone
                attempts, width = track.attempts, track.width
                if items[2::3].count(1) * 3 == len(items) and (not attempts or attempts[-width] < items[0]):
                    self._started_only(state, key, track, items, out)
                    continue
                if len(items) == 3:
                    event_ms = items[0]
                    spans = ((event_ms if items[2] == 1 else event_ms - funnel.window_ms, event_ms),)
                else:
                    spans = self._spans(items, funnel.window_ms)
                changed: list[int] = []
                for first_ms, last_ms in spans:  # in time order, so the indices found stay valid
                    changed += self._reassess(state, key, track, funnel, first_ms, last_ms, out)
                if changed:
                    self._recount(state, key, track, raised=self._emit(state, key, track, changed, out))
            else:  # an event before one held, or a replay: one event at a time, as each may reorder the track
                starts = set()
                for i in range(0, len(items), 3):
                    event_ms, mask = items[i], items[i + 2]
                    if track.insert(event_ms, items[i + 1], mask):
                        first_ms = event_ms if mask == 1 else event_ms - funnel.window_ms
                        changed = self._reassess(state, key, track, funnel, first_ms, event_ms, out)
                        starts.update([track.attempts[j] for j in changed])
                if starts:
                    self._emit(state, key, track, [track.attempt(start_ms) for start_ms in sorted(starts)], out)
                    self._recount(state, key, track)

    def _started_only(self, state: FunnelState, key: tuple[str, str, int], track: _Track, items: list,
                      out: Output) -> None:
        """What ``_reassess`` makes of appended events that are all only step-1 events and start after every attempt
        held, without chaining: each of their milliseconds is a new attempt at level 1 (nothing after them to
        chain, and a step-1 event extends or ends no other attempt), in time order, and nothing converts."""
        attempts, width = track.attempts, track.width
        # one per millisecond, in time order (append checked the order); most tracks append one event
        starts = [items[0]] if len(items) == 3 else list(dict.fromkeys(items[::3]))
        tail, new = [1, 0] + [0] * (width - 3), []  # level 1, no row version yet, no later step
        for start_ms in starts:
            new.append(start_ms)
            new += tail
        state.started(track.key, starts)
        track.attempts = attempts + new  # a new list of exactly their size, as with_attempt makes
        self._emit(state, key, track, range(len(attempts), len(track.attempts), width), out)
        # every new attempt is at level 1, so the latest one counts in every window any of them does
        self._recount(state, key, track, raised=((starts[-1], 1),))

    @staticmethod
    def _spans(items: list, window_ms: int) -> list[tuple[int, int]]:
        """The start times the events ``items`` (flat, as in a track, in time order) can change, as disjoint
        [first, last] spans in time order. An event that is only a step 1 cannot join or end another attempt (a
        chain takes step k >= 2 or stops at an exclusion), so only the attempts starting at its own millisecond
        can change; any other step event may change every attempt that can reach it: those starting within the
        conversion window before it. Each event's span ends at its own time, so walked from the latest event
        back, the spans' ends only fall: one pass merges them, no sort."""
        spans: list[tuple[int, int]] = []
        first_ms = last_ms = None
        for p in range(len(items) - 3, -1, -3):
            ms = items[p]
            first = ms if items[p + 2] == 1 else ms - window_ms
            if first_ms is not None and ms + 1 >= first_ms:  # overlaps or touches the span being merged
                if first < first_ms:
                    first_ms = first
            else:
                if first_ms is not None:
                    spans.append((first_ms, last_ms))
                first_ms, last_ms = first, ms
        spans.append((first_ms, last_ms))
        spans.reverse()
        return spans

    def _reassess(self, state: FunnelState, key: tuple[str, str, int], track: _Track, funnel: Funnel, first_ms: int,
                  last_ms: int, out: Optional[Output]) -> list[int]:
        """Recompute the attempts starting in [first_ms, last_ms]; observe new conversions into out
        (None: mark them observed silently). Returns the positions in ``track.attempts`` of the attempts that
        changed, in start order (valid until an attempt is inserted before them)."""
        tenant = key[0]
        events, steps, window_ms, chain_from = track.events, len(funnel.steps), funnel.window_ms, track.chain
        best: dict[int, list[int]] = {}
        for p in range(track.position(first_ms), track.position(last_ms + 1), 3):
            if events[p + 2] & 1:
                start_ms = events[p]
                chain = chain_from(p, steps, window_ms)
                if len(chain) > len(best.get(start_ms, ())):
                    best[start_ms] = chain
                if len(chain) == steps:
                    self._convert(track, funnel, chain, out, tenant)
        changed = []
        attempts, width = track.attempts, track.width
        for start_ms, chain in best.items():
            later = [events[q] for q in chain[1:]] + [0] * (steps - len(chain))  # the step times after the start
            p = track.since(start_ms)
            if p == len(attempts) or attempts[p] != start_ms:
                attempts = track.attempts = track.with_attempt(p, [start_ms, len(chain), 0] + later)
                state.started(track.key, (start_ms,))
            elif attempts[p + 1] != len(chain) or attempts[p + 3:p + width] != later:
                attempts[p + 1] = len(chain)
                attempts[p + 3:p + width] = later
            else:
                continue
            changed.append(p)
        return changed

    def _convert(self, track: _Track, funnel: Funnel, chain: list[int], out: Optional[Output], tenant: str) -> None:
        last_ms, last_id = track.events[chain[-1]], track.events[chain[-1] + 1]
        if track.converted is None:
            track.converted = (last_id,)
        elif last_id in track.converted:
            return
        else:
            track.converted += (last_id,)
        if out is not None:
            start_ms = self._latest_start(track, funnel, chain)
            out.observe(CONVERSION_SECONDS, (tenant, funnel.name), (last_ms - start_ms) / 1000)

    @staticmethod
    def _latest_start(track: _Track, funnel: Funnel, chain: list[int]) -> int:
        """The latest step-1 event whose greedy attempt ends at the same last-step event."""
        steps, end = len(funnel.steps), chain[-1]
        events = track.events
        latest = events[chain[0]]
        for p in range(chain[0] + 3, end, 3):
            if events[p + 2] & 1:
                other = track.chain(p, steps, funnel.window_ms)
                if len(other) == steps and other[-1] == end:
                    latest = events[p]
        return latest

    def _emit(self, state: FunnelState, key: tuple, track: _Track, positions: Sequence[int],
              out: Output) -> list[tuple[int, int]]:
        """A funnel_progress row for each attempt at ``positions`` of ``track.attempts`` (in start order);
        returns their (start, level)."""
        tenant, customer, index = key
        name, clock, partition = self.funnels[index].name, state.clock_ms, state.partition
        attempts, width, rows = track.attempts, track.width, out.rows["funnel_progress"]
        emitted = []
        for p in positions:
            start_ms, level, version = attempts[p], attempts[p + 1], attempts[p + 2]
            version = attempts[p + 2] = clock if clock > version else version + 1
            rows.append((name, tenant, customer, start_ms // 1000, start_ms, level,
                         [start_ms, *attempts[p + 3:p + width]], version, partition))
            emitted.append((start_ms, level))
        return emitted

    # -- clock ------------------------------------------------------------------------------
    def horizon_ms(self, clock_ms: int) -> int:
        """Oldest event time the state still needs: what a new event (at most max_lateness behind
        the clock) can still join within the longest conversion window, and the attempts inside the
        largest metric window."""
        window_floor = self.window_first_ms(clock_ms, max(self.windows_ms.values()))
        return min(clock_ms - self.max_lateness_ms - self.longest_window_ms, window_floor)

    @staticmethod
    def window_first_ms(clock_ms: int, window_ms: int) -> int:
        """First millisecond of a rolling window: t is inside when t // 60000 > (clock - W) // 60000."""
        return ((clock_ms - window_ms) // BUCKET_MS + 1) * BUCKET_MS

    def tick(self, state: FunnelState, clock_ms: int, out: Output) -> None:
        state.clock_ms = max(state.clock_ms, clock_ms)
        self._move_windows(state, clock_ms)
        horizon = self.horizon_ms(state.clock_ms)
        while state.expiry and state.expiry[0][0] < horizon:
            _, key = heapq.heappop(state.expiry)
            track = state.tracks.get(key)
            if track is None:
                continue
            del track.events[:track.position(horizon)]
            del track.attempts[:track.since(horizon)]
            if track.converted:
                held = set(track.events[1::3])
                track.converted = tuple(event_id for event_id in track.converted if event_id in held) or None
            oldest = track.oldest_ms()
            if oldest is None:
                self._recount(state, key, track, gone=True)
                del state.tracks[key]
            else:
                self._recount(state, key, track)
                heapq.heappush(state.expiry, (oldest, key))

    # -- restore ----------------------------------------------------------------------------
    def restore_span_ms(self) -> int:
        return max(self.max_lateness_ms, max(self.windows_ms.values()) + BUCKET_MS) + self.longest_window_ms

    def restores(self) -> Sequence[Restore]:
        span = self.restore_span_ms() + 1  # attempts and events from clock - restore_span_ms() on, inclusive
        return (
            # the last version written per attempt, so a rewritten row always outranks it
            Restore("funnel_versions", "funnel_progress", ("tenant", "funnel", "customer_id", "started_ms", "updated_ms"),
                    "started_ms", span, newest=Newest(("tenant", "funnel", "customer_id", "started_ms"), "updated_ms")),
            Restore("funnel_events", "events", ("source", "event_type", "event_ms", "event_id", "tenant", "customer_id",
                                                "attr_keys", "attr_values"), "event_ms", span,
                    where=(NotNull("customer_id"), OneOf("event_type", tuple(sorted(self._event_types))))),
        )

    def restore(self, state: FunnelState, name: str, rows: list, clock_ms: int) -> None:
        """Rebuild without emitting rows or observing conversions: whatever the events table holds
        was completely delivered (it is written last), conversions included."""
        state.clock_ms = max(state.clock_ms, clock_ms)
        self._move_windows(state, state.clock_ms)
        index_of = {funnel.name: i for i, funnel in enumerate(self.funnels)}
        if name == "funnel_versions":
            for row in rows:
                if row.funnel in index_of:
                    index = index_of[row.funnel]
                    track = state.track((row.tenant, row.customer_id, index), row.started_ms, self.funnels[index])
                    attempts, p = track.attempts, track.since(row.started_ms)
                    if p == len(attempts) or attempts[p] != row.started_ms:
                        # level 0: counts nowhere yet
                        attempts = track.attempts = track.with_attempt(p, [row.started_ms] + [0] * (track.width - 1))
                        state.started(track.key, (row.started_ms,))
                    attempts[p + 2] = max(attempts[p + 2], row.updated_ms)
            return
        touched = set()
        for row in rows:
            event = {"event_type": row.event_type, "attributes": dict(zip(row.attr_keys, row.attr_values))}
            for index, funnel in enumerate(self.funnels):
                mask = funnel.step_mask(row.source, event)
                if mask:
                    key = (row.tenant, row.customer_id, index)
                    track = state.track(key, row.event_ms, funnel)
                    track.insert(row.event_ms, id_key(row.event_id), mask)
                    touched.add(key)
        for key in touched:
            track, funnel = state.tracks[key], self.funnels[key[2]]
            self._reassess(state, key, track, funnel, track.events[0], track.events[-3], None)
            self._recount(state, key, track)

    # -- scrape -----------------------------------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("cx_funnel_customers", "Customers whose best funnel attempt started in the window "
                              "reached at least this step (additive over workers).",
                              labels=("tenant", "funnel", "step", "window")),
            GaugeMetricFamily("cx_funnel_conversion_ratio", "Customers at the last step / customers at step 1, "
                              "by attempts started in the window.", labels=("tenant", "funnel", "window")),
        )

    def at_least(self, states: Sequence[FunnelState], clocks: Sequence[int]) -> dict[tuple[str, int, str], list[int]]:
        """(tenant, funnel index, window) -> customers who reached at least step 1..n."""
        totals: dict[tuple[str, int, str], list[int]] = {}
        for state, clock_ms in zip(states, clocks):
            for (tenant, index, label), counts in self._reached(state, clock_ms).items():
                acc = totals.setdefault((tenant, index, label), [0] * len(counts))
                for k, n in enumerate(counts):
                    acc[k] += n
        return totals

    def _reached(self, state: FunnelState, clock_ms: int) -> dict[tuple[str, int, str], list[int]]:
        """One partition's counts at ``clock_ms``: the kept gauge, its windows moved on to that clock first (the
        scrape's clock is the last tick's, so nothing moves); a clock before the kept one is counted afresh."""
        firsts = self._firsts(clock_ms)
        if firsts < state.firsts:
            return self.count_tracks(state, clock_ms)
        self._move_windows(state, clock_ms)
        labels = tuple(self.windows_ms)
        out = {}
        for (tenant, index), n in state.tracked.items():
            if n:
                reached = state.reached.get((tenant, index))
                for w, label in enumerate(labels):
                    out[(tenant, index, label)] = list(reached[w]) if reached else [0] * len(self.funnels[index].steps)
        return out

    def count_tracks(self, state: FunnelState, clock_ms: int) -> dict[tuple[str, int, str], list[int]]:
        """The same counts from every track (the plain recomputation the kept gauge must equal)."""
        totals: dict[tuple[str, int, str], list[int]] = {}
        firsts = {label: self.window_first_ms(clock_ms, window) for label, window in self.windows_ms.items()}
        for (tenant, _, index), track in state.tracks.items():
            steps = len(self.funnels[index].steps)
            for label, first_ms in firsts.items():
                counts = totals.setdefault((tenant, index, label), [0] * steps)
                for k in range(track.level_since(first_ms)):
                    counts[k] += 1
        return totals

    # -- the kept gauge ---------------------------------------------------------------------
    def _firsts(self, clock_ms: int) -> tuple[int, ...]:
        return tuple(self.window_first_ms(clock_ms, window) for window in self.windows_ms.values())

    def _recount(self, state: FunnelState, key: tuple[str, str, int], track: _Track, gone: bool = False,
                 raised: Optional[Sequence[tuple[int, int]]] = None) -> None:
        """Bring the gauge's counts of one track up to date after its attempts changed (``gone``: deleted;
        ``raised``: only these (start, level) attempts changed, none to a lower level, so each window's level
        is the higher of its counted one and theirs: no walk over the track's attempts)."""
        bits = self._level_bits
        old = track.counted
        if gone:
            new = 0
        elif raised is None:
            new = self._pack(track.levels_since(state.firsts))
        else:
            mask, new, shift = (1 << bits) - 1, old, 0
            for first_ms in state.firsts:
                was = old >> shift & mask
                for start_ms, level in raised:
                    if level > was and start_ms >= first_ms:
                        new += (level - was) << shift
                        was = level
                shift += bits
        if gone:
            state.tracked[key[0], key[2]] -= 1
        if new == old:
            return
        track.counted = new
        reached = state.reached.get((key[0], key[2]))
        if reached is None:
            steps = len(self.funnels[key[2]].steps)
            reached = state.reached[key[0], key[2]] = [[0] * steps for _ in state.firsts]
        mask, shift = (1 << bits) - 1, 0
        for counts in reached:
            was, now = old >> shift & mask, new >> shift & mask
            if was != now:
                for k in range(now, was):
                    counts[k] -= 1
                for k in range(was, now):
                    counts[k] += 1
            shift += bits

    def _pack(self, levels: Sequence[int]) -> int:
        """Levels per window as one int (a small one: no object per track when all are 0 and few windows)."""
        packed = 0
        for w, level in enumerate(levels):
            packed |= level << (w * self._level_bits)
        return packed

    def _move_windows(self, state: FunnelState, clock_ms: int) -> None:
        """Move the windows' boundaries on to ``clock_ms``: only the tracks with an attempt starting in the
        minutes a boundary passes can change their count. Minutes every window has left are forgotten."""
        firsts = self._firsts(clock_ms)
        old = state.firsts
        if firsts <= old:
            return
        starts, passed = state.starts, set()
        oldest_kept = min(firsts) // BUCKET_MS
        for was, now in zip(old, firsts):
            first, last = was // BUCKET_MS, now // BUCKET_MS  # the minutes [first, last) leave this window
            minutes = range(first, last) if last - first <= len(starts) else [m for m in starts if first <= m < last]
            for minute in minutes:
                keys = starts.get(minute)
                if keys:
                    passed.update(keys)
        dropped = oldest_kept - min(old) // BUCKET_MS  # no key is older than the oldest window's first (started)
        for minute in range(oldest_kept - dropped, oldest_kept) if dropped <= len(starts) else \
                [m for m in starts if m < oldest_kept]:
            starts.pop(minute, None)
        state.firsts = firsts
        tracks = state.tracks
        for key in passed:
            track = tracks.get(key)
            if track is not None:
                self._recount(state, key, track)

    def levels(self, state: FunnelState, since_ms: int = -(2**62)) -> dict[tuple[str, str, str], int]:
        """(tenant, customer, funnel) -> best level of the attempts starting at or after since_ms."""
        return {(tenant, customer, self.funnels[index].name): track.level_since(since_ms)
                for (tenant, customer, index), track in state.tracks.items()}

    def collect(self, states: Sequence[FunnelState], clocks: Sequence[int]) -> Iterable[Metric]:
        customers, ratio = self._families()
        for (tenant, index, label), counts in sorted(self.at_least(states, clocks).items()):
            funnel = self.funnels[index]
            for step, n in zip(funnel.steps, counts):
                customers.add_metric((tenant, funnel.name, step.name, label), n)
            if counts[0]:
                ratio.add_metric((tenant, funnel.name, label), counts[-1] / counts[0])
        return [customers, ratio]

    def snapshot(self, states: Sequence[FunnelState], clocks: Sequence[int]) -> Iterable[tuple[str, str, str, float, int]]:
        """(tenant, 'funnel_conversion:<funnel>', window, last/first step, first-step customers)."""
        return [(tenant, f"funnel_conversion:{self.funnels[index].name}", label, counts[-1] / counts[0], counts[0])
                for (tenant, index, label), counts in sorted(self.at_least(states, clocks).items()) if counts[0]]
