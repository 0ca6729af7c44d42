"""tddfa_edge.datasets: where the toolkit finds its data and what the shared data folder holds.

Used by the exporter (checkpoints, 3DMM, calibration crops), the checkpoint registry and the benchmarks
(AFLW2000-3D, reference photos, video); never by the on-device runtime, which reads only bundles.
"""
