"""Where a process runs: device and precision, seeding, data parallelism, signals."""
