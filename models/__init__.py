"""tddfa_edge.models."""
