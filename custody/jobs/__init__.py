"""Background jobs (APScheduler): chain scanners now; confirm, sweep, reconcile later."""
