"""Latency profiling: stage timers, statistics, Jetson telemetry and reports."""
