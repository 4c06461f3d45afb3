"""Real local services for the demo, the tests and the benchmarks: a Tansu broker, a ClickHouse server,
Prometheus and `cxp worker` itself, each on free loopback ports with its files in a given folder, and
stopped by PID. No pytest here: failures are plain exceptions, which the test fixtures translate."""
