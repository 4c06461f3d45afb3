"""How often the complaint spike detector cries wolf, and how fast it sees a real surge.

Simulates, per tenant, hourly complaint openings as a seasonal Poisson series (a daily curve peaking
mid-afternoon, quieter weekends; mean rates from a few to a few dozen an hour), seeded. Runs the
detector of :mod:`pipeline.metrics.complaint_spikes` exactly as the worker does (the same
``SpikeTest``: same-hour-of-week baseline, EWMA while history is short, the one- and two-bucket
Poisson tests and the guards) bucket by bucket, and reports:

- false alarms per tenant per simulated week on healthy traffic: alarm episodes (runs of flagged
  buckets), counted from the second day on, when a baseline first exists;
- detection delay of a 3x surge: in how many buckets, counted from the surge's first, the flag is
  raised (1 = by the end of the first surge bucket), over many surges at random hours.

A bucket's count only grows while it is current, and the test is monotone in it, so evaluating each
bucket once at its end gives exactly the buckets the live flag would have raised.

    python -m benchmarks.spike_eval --weeks 12 --rates 10,20,40 --surges 200 --seed 1

At a few complaints an hour a 3x surge is indistinguishable from noise within two hours at any
threshold that keeps false alarms rare (try ``--rates 3,5``): there the detector needs longer.
"""
from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass
from random import Random
from typing import Optional

from pipeline.metrics.complaint_spikes import SpikeTest
from pipeline.config import duration_ms
from pipeline.settings import Settings

HOURS_PER_WEEK = 168


def seasonal_rate(mean_per_hour: float, hour: int) -> float:
    """Expected openings in hour ``hour`` (0 = Monday 00:00) of a tenant with this weekly mean."""
    of_day, day = hour % 24, (hour // 24) % 7
    daily = 1.0 + 0.6 * math.sin(2 * math.pi * (of_day - 9) / 24)
    weekly = 0.6 if day >= 5 else 1.16
    return mean_per_hour * daily * weekly


def poisson_sample(rng: Random, lam: float) -> int:
    """Inversion by sequential search: exact, fine for the rates simulated here."""
    k, p = 0, math.exp(-lam)
    cumulative, u = p, rng.random()
    while u > cumulative and p > 0:
        k += 1
        p *= lam / k
        cumulative += p
    return k


@dataclass
class Figures:
    tenant_weeks: float
    false_alarms: int
    delays: list[Optional[int]]  # buckets to detection per surge; None = not within the surge

    @property
    def false_alarms_per_tenant_week(self) -> float:
        return self.false_alarms / self.tenant_weeks

    def delay_quantile(self, q: float) -> float:
        found = sorted(d if d is not None else math.inf for d in self.delays)
        return found[min(len(found) - 1, int(q * len(found)))]


def series(rng: Random, mean: float, hours: int, surge: Optional[tuple[int, int]] = None, factor: float = 3.0) -> dict:
    counts = {}
    for hour in range(hours):
        lam = seasonal_rate(mean, hour) * (factor if surge and surge[0] <= hour < surge[1] else 1.0)
        counts[hour] = poisson_sample(rng, lam)
    return counts


def flags(test: SpikeTest, counts: dict[int, int], upto: int, start: int = 0) -> list[bool]:
    return [test.flagged(counts, 0, bucket) for bucket in range(start, upto)]


def evaluate(test: SpikeTest, seed: int, means: list[float], weeks: int, surges: int, surge_hours: int = 6,
             factor: float = 3.0) -> Figures:
    """Figures over one tenant per entry of ``means`` (its mean openings per hour)."""
    rng = Random(seed)
    tenants = len(means)
    hours = weeks * HOURS_PER_WEEK
    false_alarms = 0
    for mean in means:
        flagged = flags(test, series(rng, mean, hours), hours, start=24)
        false_alarms += sum(1 for i, f in enumerate(flagged) if f and (i == 0 or not flagged[i - 1]))
    delays: list[Optional[int]] = []
    history = (test.weeks + 1) * HOURS_PER_WEEK
    for i in range(surges):
        mean = means[i % tenants]
        start = history + rng.randrange(HOURS_PER_WEEK)
        counts = series(rng, mean, start + surge_hours, (start, start + surge_hours), factor)
        raised = flags(test, counts, start + surge_hours, start=start)
        delays.append(next((k + 1 for k, f in enumerate(raised) if f), None))
    return Figures(tenants * (weeks - 1 / 7), false_alarms, delays)


def main(argv: Optional[list[str]] = None) -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--rates", default="10,20,40,10,20,40",
                        help="mean complaints opened per hour, one per simulated tenant (default 10,20,40,10,20,40)")
    parser.add_argument("--weeks", type=int, default=12, help="healthy weeks per tenant (default 12)")
    parser.add_argument("--surges", type=int, default=200, help="surges for the delay figures (default 200)")
    parser.add_argument("--factor", type=float, default=3.0, help="surge size, times the usual rate (default 3)")
    parser.add_argument("--alpha", type=float, default=defaults.complaint_spikes.alpha, help="CXP_SPIKE_ALPHA")
    parser.add_argument("--min-count", type=int, default=defaults.complaint_spikes.min_count, help="CXP_SPIKE_MIN_COUNT")
    parser.add_argument("--min-ratio", type=float, default=defaults.complaint_spikes.min_ratio, help="CXP_SPIKE_MIN_RATIO")
    parser.add_argument("--baseline-weeks", type=int, default=defaults.complaint_spikes.weeks, help="CXP_SPIKE_WEEKS")
    args = parser.parse_args(argv)
    test = SpikeTest(duration_ms("1h"), args.alpha, args.min_count, args.min_ratio, args.baseline_weeks)
    rates = [float(rate) for rate in args.rates.split(",")]
    figures = evaluate(test, args.seed, rates, args.weeks, args.surges, factor=args.factor)
    print(f"tenants at {args.rates} complaints/h on average, {args.weeks} weeks each, seed {args.seed}")
    detected = [d for d in figures.delays if d is not None]
    print(f"false alarms: {figures.false_alarms} in {figures.tenant_weeks:.1f} tenant-weeks = "
          f"{figures.false_alarms_per_tenant_week:.3f} per tenant per week")
    print(f"{args.factor:g}x surges: {len(detected)}/{len(figures.delays)} detected within the surge; delay in buckets "
          f"(1 = by the end of the first): median {figures.delay_quantile(0.5):g}, p90 {figures.delay_quantile(0.9):g}, "
          f"max {max(figures.delays, key=lambda d: math.inf if d is None else d) or 'not detected'}; "
          f"within 2 buckets: {sum(1 for d in detected if d <= 2) / len(figures.delays):.1%}")
    if detected:
        print(f"mean delay of detected surges: {statistics.mean(detected):.2f} buckets")


if __name__ == "__main__":
    main()
