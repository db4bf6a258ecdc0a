"""Reports: one evaluation, one finished run, and a comparison of runs."""
