"""RQ jobs and schedules: a thin layer around the core's functions."""
