"""Planning and analysis: ahead-of-time compiles, step and HLO statistics, the plan report."""
