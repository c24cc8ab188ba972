"""Monitoring core: drift statistics, performance estimation and drift reports (no Dagster).

Import the modules themselves (`drift`, `estimate`, `report`, `daily`): the package imports nothing, so the
Dagster definitions load without scipy.
"""
