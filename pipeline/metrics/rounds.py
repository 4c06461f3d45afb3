"""One round of the metric cores over one partition: each core's step in run order, each preceded by a
``take`` of the facts routed to it (the rule is in :mod:`pipeline.metrics.base`). The processor runs an
add phase per partition with accepted events and a tick phase per partition after every batch."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from pipeline.metrics.base import ADD, TAKE, TICK, Batch, Facts, MetricCore, Output


class Rounds:
    def __init__(self, cores: Sequence[MetricCore]):
        self.cores = list(cores)
        consumers: dict[type, list[int]] = {}
        for index, core in enumerate(self.cores):
            for fact in core.consumes:
                consumers.setdefault(fact, []).append(index)
        self.consumers = {fact: tuple(indices) for fact, indices in consumers.items()}
        self.phases = 0  # phases run so far: the cores' states changed only if this moved (a scrape's cache key)

    def add(self, states: Sequence[Any], batch: Batch, out: Output) -> None:
        self._phase(states, ADD, lambda core, state: core.add(state, batch, out), out)

    def tick(self, states: Sequence[Any], clock_ms: int, out: Output) -> None:
        self._phase(states, TICK, lambda core, state: core.tick(state, clock_ms, out), out)

    def _phase(self, states: Sequence[Any], phase: str, step: Callable[[MetricCore, Any], None], out: Output) -> None:
        self.phases += 1
        inbox: dict[int, list] = {}
        for index, (core, state) in enumerate(zip(self.cores, states)):
            pending = inbox.pop(index, None)
            if pending:
                core.take(state, Facts(pending), out)
                self._route(core, TAKE, out, inbox)
            step(core, state)
            self._route(core, phase, out, inbox)
        if inbox:  # a consumer ran before its producer: the cores were not in run order
            raise RuntimeError(f"facts for cores {sorted(inbox)} were published after those cores ran")

    def _route(self, core: MetricCore, phase: str, out: Output, inbox: dict[int, list]) -> None:
        """Hand the facts ``core`` just published to their consumers (which run later in this phase)."""
        for fact in out.facts:
            if core.publishes.get(type(fact)) != phase:
                raise TypeError(f"metric core {core.name!r} published {type(fact).__name__} in {phase}, which it "
                                f"does not declare (publishes: {core.publishes})")
            for consumer in self.consumers.get(type(fact), ()):
                inbox.setdefault(consumer, []).append(fact)
        out.facts.clear()
