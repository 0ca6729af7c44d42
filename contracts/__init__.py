"""tddfa_edge.contracts: what every layer shares and nothing more (standard library only).

- ``errors``: the typed errors and the exit code each maps to (one table for every CLI);
- ``records``: strict typed records, frozen dataclasses read from JSON / TOML data that reject unknown,
  missing and mistyped fields by name (targets and bundle manifests are both read this way).
"""
