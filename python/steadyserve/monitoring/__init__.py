"""Monitoring: Prometheus metrics (and, as they land, drift, alerts, structured logs)."""
