"""wajah's benchmarks: each suite prints a table and writes JSON to benchmarks/results/."""
