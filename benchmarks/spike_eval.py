"""How fast the complaint spike detector sees a surge, and how often it cries wolf, on simulated traffic.

Traffic: per tenant, complaints opened per event-time minute as a seasonal Poisson series (a daily
curve peaking mid-afternoon at 1.6x the day's mean and bottoming at 0.4x before dawn, weekdays at
1.16x and weekends at 0.6x the weekly mean), seeded. ``--daily-noise S`` also multiplies each day by a
log-normal level (sigma S): real traffic varies more than Poisson from day to day.

Figures, for the detector of :mod:`pipeline.metrics.complaint_spikes` with the settings given (default:
the shipped defaults), run exactly as the worker computes ``cx_complaint_spike`` at every minute:

- detection delay: a surge multiplies a tenant's traffic by ``factor`` for ``--surge-minutes`` (180)
  minutes from a random minute of the week, after ``weeks + 1`` weeks of history. The baseline is the
  tenant's usual rate *at the surge's start* (the tenant's weekly mean is scaled so), as in "2 an hour
  before, up to 6 during". Delay = minutes from the surge's first minute to the first minute the flag
  is 1 (1 = within the first minute); a surge not flagged before it ends counts as never. Median and
  90th percentile over ``--surges`` surges per cell;
- false alarms: flag raises (0 -> 1) per tenant-month (30 days) on healthy traffic at each weekly mean
  rate, after the first ``weeks + 1`` weeks (full history), over ``--months`` months per rate (four
  tenants); and, separately, the raises from the second day to the end of those first weeks (short
  history, 4.5 tenant-months per rate).

``--compare`` measures the candidate methods at the thresholds that keep them near one false alarm per
tenant-month: the hourly buckets aligned to the clock that this detector replaced, the sliding window
(the shipped one), several windows at once, and a Poisson CUSUM on minute buckets.

    python -m benchmarks.spike_eval                      # the table of docs/metrics.md, ~2 min
    python -m benchmarks.spike_eval --markdown           # the same as Markdown
    python -m benchmarks.spike_eval --compare            # the candidates, ~5 min
    python -m benchmarks.spike_eval --alpha 3e-4 --daily-noise 0.2
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np

from pipeline.metrics.complaint_spikes import DAY_MINUTES, WEEK_MINUTES, Openings, SpikeTest, poisson_tail
from pipeline.settings import Settings

MONTH_MINUTES = 30 * DAY_MINUTES
BASELINES = (1.0, 2.0, 5.0, 20.0)
FACTORS = (2.0, 3.0, 5.0)

# A detector: one tenant's openings per minute, their true expected values (only the oracle may look) and a
# range [start, stop) -> the flag at each minute of the range.
Detector = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]


def seasonal_rate(mean_per_hour: float, minutes: np.ndarray) -> np.ndarray:
    """Expected openings in each minute (0 = Monday 00:00) of a tenant with this weekly mean per hour."""
    hour_of_day = (minutes % DAY_MINUTES) / 60.0
    daily = 1.0 + 0.6 * np.sin(2 * np.pi * (hour_of_day - 9) / 24)
    weekly = np.where((minutes // DAY_MINUTES) % 7 >= 5, 0.6, 1.16)
    return mean_per_hour * daily * weekly / 60.0


def openings(rng: np.random.Generator, mean_per_hour: float, minutes: int, daily_noise: float = 0.0,
             surge: Optional[tuple[int, float]] = None) -> tuple[np.ndarray, np.ndarray]:
    """Openings per minute for ``minutes`` minutes, and the usual rate they were drawn around (without
    the surge); ``surge`` = (first minute, factor) to the end."""
    rate = seasonal_rate(mean_per_hour, np.arange(minutes))
    if daily_noise:
        levels = rng.lognormal(-daily_noise ** 2 / 2, daily_noise, minutes // DAY_MINUTES + 1)
        rate = rate * np.repeat(levels, DAY_MINUTES)[:minutes]
    drawn = rate.copy()
    if surge:
        drawn[surge[0]:] *= surge[1]
    return rng.poisson(drawn), rate


def raises(flags: np.ndarray) -> int:
    return int(np.count_nonzero(flags[1:] & ~flags[:-1]) + bool(len(flags) and flags[0]))


# -- the detectors ---------------------------------------------------------------------------------
def sparse(counts: np.ndarray) -> Openings:
    minutes = np.flatnonzero(counts)
    return Openings(minutes, counts[minutes])


def sliding_window(test: SpikeTest) -> Detector:
    """The shipped detector: ``SpikeTest.flags``, as ``collect`` computes ``cx_complaint_spike``."""
    return lambda counts, rate, start, stop: test.flags(sparse(counts), start, stop)


def several_windows(tests: Sequence[SpikeTest]) -> Detector:
    """Flag when any of several sliding windows (each at its share of α) is flagged."""
    def detect(counts: np.ndarray, rate: np.ndarray, start: int, stop: int) -> np.ndarray:
        found = sparse(counts)
        return np.any([test.flags(found, start, stop) for test in tests], axis=0)
    return detect


def poisson_cusum(test: Optional[SpikeTest], ratio: float, threshold: float, memory: int) -> Detector:
    """Page's CUSUM for a Poisson rate rising ``ratio``-fold, on minute buckets, against each minute's
    baseline (``test``'s for a one-minute window; None: the true rate, an oracle no detector can be),
    restarted ``memory`` minutes back; flag while >= threshold."""
    per_minute = replace(test, window=1) if test else None

    def detect(counts: np.ndarray, rate: np.ndarray, start: int, stop: int) -> np.ndarray:
        minutes = np.arange(start - memory, stop)
        lam = per_minute.expected(sparse(counts), minutes) if per_minute else rate[minutes]
        evidence = np.where(np.isnan(lam), 0.0, counts[minutes] * math.log(ratio) - lam * (ratio - 1))
        score = np.concatenate(([0.0], np.cumsum(evidence)))  # no baseline: no evidence either way
        lowest = np.lib.stride_tricks.sliding_window_view(score, memory + 1).min(axis=1)
        return score[memory + 1:] - lowest[1:] >= threshold
    return detect


@dataclass(frozen=True)
class HourlyBuckets:
    """The detector this one replaced: event-time hours aligned to the clock; the current hour's count so
    far (alone, or with the previous hour against twice the baseline) against the same hour of the last
    ``weeks`` weeks (EWMA of recent days while history is short), flag held through the next hour."""

    alpha: float
    min_count: int
    min_ratio: float
    weeks: int

    def baseline(self, counts: np.ndarray, hour: int) -> Optional[float]:
        same = [counts[hour - k * 168] for k in range(1, self.weeks + 1) if hour - k * 168 >= 1]
        if len(same) == self.weeks:
            return float(sum(same)) / self.weeks
        days = [hour - d * 24 for d in range(min(7, (hour - 1) // 24), 0, -1)]
        if not days:
            return None
        ewma = float(counts[days[0]])
        for day in days[1:]:
            ewma += 0.3 * (counts[day] - ewma)
        return (sum(same) + (self.weeks - len(same)) * ewma) / self.weeks

    def significant(self, x: int, lam: float) -> bool:
        return x >= self.min_count and x >= self.min_ratio * lam and poisson_tail(x, lam) < self.alpha

    def flagged(self, hours: np.ndarray, hour: int) -> bool:
        lam = self.baseline(hours, hour)
        if lam is None:
            return False
        before = self.baseline(hours, hour - 1)
        return self.significant(int(hours[hour]), lam) or (
            before is not None and self.significant(int(hours[hour] + hours[hour - 1]), lam + before))

    def __call__(self, counts: np.ndarray, rate: np.ndarray, start: int, stop: int) -> np.ndarray:
        minutes = np.arange(start, stop)
        flags = np.zeros(len(minutes), bool)
        whole = np.add.reduceat(counts, np.arange(0, len(counts), 60))  # complete hours
        for hour in range(start // 60 - 1, (stop - 1) // 60 + 1):
            if hour < 1 or not self.flagged(whole, hour):  # the count only grows: a complete hour decides
                continue
            so_far = whole[:hour + 1].copy()
            for minute in range(hour * 60, hour * 60 + 60):  # when did the flag rise inside the hour?
                so_far[hour] = counts[hour * 60:minute + 1].sum()
                if self.flagged(so_far, hour):
                    flags |= (minutes >= minute) & (minutes < (hour + 2) * 60)  # held through the next hour
                    break
        return flags


# -- the figures -----------------------------------------------------------------------------------
@dataclass
class FalseAlarms:
    per_month: float  # with full history
    short_history_per_month: float  # from the second day until weeks + 1 weeks of history


def false_alarms(detect: Detector, mean: float, months: float, seed: int, weeks: int, daily_noise: float = 0.0,
                 tenants: int = 4) -> FalseAlarms:
    """Raises over ``tenants`` tenants sharing ``months`` months of full history, each with its own short one."""
    rng = np.random.default_rng(seed)
    warm_up = (weeks + 1) * WEEK_MINUTES
    full = short = 0
    for _ in range(tenants):
        total = warm_up + int(months / tenants * MONTH_MINUTES)
        flags = detect(*openings(rng, mean, total, daily_noise), DAY_MINUTES, total)
        short += raises(flags[:warm_up - DAY_MINUTES])
        full += raises(flags[warm_up - DAY_MINUTES:])
    return FalseAlarms(full / months, short / (tenants * (warm_up - DAY_MINUTES) / MONTH_MINUTES))


def delays(detect: Detector, baseline: float, factor: float, surges: int, seed: int, weeks: int,
           surge_minutes: int = 180, daily_noise: float = 0.0) -> list[Optional[int]]:
    """Minutes to detection of each surge (None: not flagged while it lasted)."""
    rng = np.random.default_rng(seed)
    found: list[Optional[int]] = []
    for _ in range(surges):
        start = (weeks + 1) * WEEK_MINUTES + int(rng.integers(WEEK_MINUTES))
        mean = baseline / (seasonal_rate(1.0, np.array([start]))[0] * 60)  # usual rate at the start = baseline
        counts, rate = openings(rng, mean, start + surge_minutes, daily_noise, surge=(start, factor))
        hits = np.flatnonzero(detect(counts, rate, start, start + surge_minutes))
        found.append(int(hits[0]) + 1 if len(hits) else None)
    return found


def quantile(values: list[Optional[int]], q: float) -> float:
    ordered = sorted(math.inf if v is None else v for v in values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Table:
    delays: dict[tuple[float, float], list[Optional[int]]]  # (baseline, factor) -> delays
    false_alarms: dict[float, FalseAlarms]  # weekly mean -> figures


def measure(detect: Detector, weeks: int, seed: int, months: float, surges: int, baselines=BASELINES,
            factors=FACTORS, daily_noise: float = 0.0, surge_minutes: int = 180) -> Table:
    """Every figure from its own seeded stream (seed, rate and factor), so one cell reruns alone."""
    return Table(
        {(b, f): delays(detect, b, f, surges, seed * 1_000_003 + int(b * 100) * 10 + int(f), weeks, surge_minutes,
                        daily_noise) for b in baselines for f in factors},
        {b: false_alarms(detect, b, months, seed * 1_000_003 + int(b * 100), weeks, daily_noise) for b in baselines})


def minutes_cell(value: float, surge_minutes: int) -> str:
    return f"> {surge_minutes}" if math.isinf(value) else f"{value:g}"


def markdown(table: Table, surge_minutes: int) -> str:
    baselines = sorted(table.false_alarms)
    factors = sorted({f for _, f in table.delays})
    head = "| baseline (complaints/h) | " + " | ".join(f"{f:g}× surge: median / p90 (min), flagged" for f in factors) \
        + " | false alarms per tenant-month (full history; short history) |"
    lines = [head, "|" + "---|" * (len(factors) + 2)]
    for b in baselines:
        cells = []
        for f in factors:
            found = table.delays[(b, f)]
            flagged = sum(d is not None for d in found) / len(found)
            cells.append(f"{minutes_cell(quantile(found, 0.5), surge_minutes)} / "
                         f"{minutes_cell(quantile(found, 0.9), surge_minutes)}, {flagged:.0%}")
        fa = table.false_alarms[b]
        lines.append(f"| {b:g} | " + " | ".join(cells) + f" | {fa.per_month:.2f}; {fa.short_history_per_month:.2f} |")
    return "\n".join(lines)


def candidates(test: SpikeTest) -> dict[str, Detector]:
    """The methods compared, each at thresholds found to keep it near 1 false alarm per tenant-month."""
    return {
        "hourly buckets (before)": HourlyBuckets(test.alpha, test.min_count, test.min_ratio, test.weeks),
        f"sliding {test.window} min window, hold {test.hold} min (shipped)": sliding_window(test),
        "windows of 30, 60, 120 min, α/3 each": several_windows(
            [replace(test, window=w, alpha=test.alpha / 3) for w in (30, 60, 120)]),
        "Poisson CUSUM on minutes, same baseline (3× design, h = 10)": poisson_cusum(test, 3.0, 10.0, 360),
        "oracle: the same CUSUM knowing the true usual rate (h = 9.5; no detector can know it)":
            poisson_cusum(None, 3.0, 9.5, 360),
    }


def main(argv: Optional[list[str]] = None) -> None:
    defaults = Settings().complaint_spikes
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--months", type=float, default=24, help="healthy tenant-months per rate (default 24)")
    parser.add_argument("--surges", type=int, default=200, help="surges per cell (default 200)")
    parser.add_argument("--surge-minutes", type=int, default=180, help="length of each surge (default 180)")
    parser.add_argument("--daily-noise", type=float, default=0.0,
                        help="sigma of a log-normal level per day (default 0)")
    parser.add_argument("--compare", action="store_true", help="measure the candidate methods (3x surges only)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    minutes = lambda d: d.ms // 60_000  # noqa: E731
    parser.add_argument("--window", type=int, default=minutes(defaults.window), help="CXP_SPIKE_WINDOW, minutes")
    parser.add_argument("--spread", type=int, default=minutes(defaults.spread), help="CXP_SPIKE_SPREAD, minutes")
    parser.add_argument("--hold", type=int, default=minutes(defaults.hold), help="CXP_SPIKE_HOLD, minutes")
    parser.add_argument("--alpha", type=float, default=defaults.alpha, help="CXP_SPIKE_ALPHA")
    parser.add_argument("--min-count", type=int, default=defaults.min_count, help="CXP_SPIKE_MIN_COUNT")
    parser.add_argument("--min-ratio", type=float, default=defaults.min_ratio, help="CXP_SPIKE_MIN_RATIO")
    parser.add_argument("--weeks", type=int, default=defaults.weeks, help="CXP_SPIKE_WEEKS")
    args = parser.parse_args(argv)
    test = SpikeTest(args.window, args.spread, args.alpha, args.min_count, args.min_ratio, args.weeks, args.hold)
    print(f"{test}; seed {args.seed}, {args.months:g} tenant-months per rate, {args.surges} surges of "
          f"{args.surge_minutes} min per cell, daily noise {args.daily_noise:g}")
    if args.compare:
        for name, detect in candidates(test).items():
            began = time.monotonic()
            table = measure(detect, args.weeks, args.seed, args.months, args.surges, factors=(3.0,),
                            daily_noise=args.daily_noise, surge_minutes=args.surge_minutes)
            print(f"\n{name} ({time.monotonic() - began:.0f} s)\n{markdown(table, args.surge_minutes)}")
        return
    table = measure(sliding_window(test), args.weeks, args.seed, args.months, args.surges,
                    daily_noise=args.daily_noise, surge_minutes=args.surge_minutes)
    if args.markdown:
        print(markdown(table, args.surge_minutes))
        return
    for (b, f), found in sorted(table.delays.items()):
        flagged = [d for d in found if d is not None]
        print(f"baseline {b:>4g}/h, {f:g}x: median {minutes_cell(quantile(found, 0.5), args.surge_minutes)} min, "
              f"p90 {minutes_cell(quantile(found, 0.9), args.surge_minutes)} min, flagged {len(flagged)}/{len(found)}"
              + (f", mean of flagged {statistics.mean(flagged):.1f} min" if flagged else ""))
    for b, fa in sorted(table.false_alarms.items()):
        print(f"mean {b:>4g}/h: {fa.per_month:.2f} false alarms per tenant-month with full history, "
              f"{fa.short_history_per_month:.2f} while history is short")


if __name__ == "__main__":
    main()
