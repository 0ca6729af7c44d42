"""tddfa_edge.export."""
