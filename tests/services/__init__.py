"""Real services for integration tests: each is started on free loopback ports and stopped by PID."""
