"""Drift between snapshots: per customer and axis over 7-365 days, anomalies, a trend, recommendations, population
drift, and the evidence behind them. Pure. May import: settings, runtime, sources, history, model."""
