"""tddfa_edge.runtime."""
