"""The sections of a ``tddfa-bench`` run, in report order (standard library only: the CLI reads this before numpy loads)."""

SECTIONS = ("latency", "cold_start", "accuracy", "stability", "recall", "face_size", "end_to_end", "run", "variants")
