"""The Dagster definitions (thin: each asset, job, schedule and sensor calls the run package).
May import: anything but api and cli."""
