"""Dagster wiring only: partitions, assets, checks, sensors, schedules, jobs and resources."""
