"""Memory of the funnel core per customer and funnel, measured with tracemalloc.

    python -m benchmarks.funnel_memory [--customers N] [--every SECONDS]

One new customer every --every seconds of event time does a purchase session (3 product views,
cart, checkout, purchase) on the bundled purchase funnel with the default settings (windows 1h,
24h, 7d; max lateness 7d). State is kept while a late event or a metric window can still reach it
(7d + 1h), so it grows until the stream is that long and is flat after: the script prints the
traced bytes along the stream and the bytes per customer and funnel at the plateau.
"""
from __future__ import annotations

import argparse
import gc
import tracemalloc

from pipeline.metrics.base import Batch, Output
from pipeline.metrics.funnels import FunnelCore
from pipeline.settings import Settings

SESSION = (("product_view", 0), ("product_view", 20), ("product_view", 45), ("add_to_cart", 60),
           ("checkout_started", 150), ("purchase", 270))  # (event type, seconds into the session)
T0 = 1_790_000_000_000


def session(i: int, start_ms: int) -> list[dict]:
    return [{"event_id": f"{i:08d}-{k}", "event_type": kind, "event_time": start_ms + s * 1000, "tenant": "acme",
             "customer_id": f"cust-{i:08d}", "session_id": f"s{i}", "attributes": {"plan": "pro"}}
            for k, (kind, s) in enumerate(SESSION)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=30_000)
    parser.add_argument("--every", type=float, default=60.0, help="seconds of event time between customers")
    args = parser.parse_args()
    settings = Settings()
    core = FunnelCore.configure(settings.funnels, settings.stream)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    state = core.new_state(0)
    report_every = max(1, args.customers // 10)
    for i in range(args.customers):
        start = T0 + int(i * args.every * 1000)
        out = Output()
        core.add(state, Batch.of(0, [("web", event) for event in session(i, start)]), out)
        core.tick(state, start + SESSION[-1][1] * 1000, out)
        if (i + 1) % report_every == 0:
            del out
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - base
            print(f"{i + 1:>8} customers, {len(state.tracks):>7} in state: {used / 1e6:8.2f} MB, "
                  f"{used / max(1, len(state.tracks)):6.0f} bytes per customer per funnel")
    tracemalloc.stop()


if __name__ == "__main__":
    main()
