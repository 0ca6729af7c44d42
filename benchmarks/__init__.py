"""tddfa_edge.benchmarks."""
