"""bushub-bench: the relay benchmark (workload R) and its baselines."""
