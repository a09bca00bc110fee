"""Version lifecycle: evaluation gate, shadow traffic, probation and rollback."""
