"""Run every model variant of a bundle on fixed frames and save the raw results (for x86 vs aarch64 checks).

    python cross_platform_probe.py BUNDLE FRAMES.npz OUT.npz

Runs in-process only (the aarch64 guest under qemu cannot spawn processes). For each regressor variant:
landmarks and raw outputs on the given crops. For each detector variant: boxes on the given frames.
For the bundle's default pipeline: the faces found on each frame (landmarks and crop boxes). Any failure
(a missing backend included) ends the probe with a traceback and a non-zero exit: the comparison needs
every variant on both sides.
"""

from __future__ import annotations

import platform
import sys

import numpy as np


def main(bundle_path: str, frames_path: str, out_path: str) -> int:
    from tddfa_edge.runtime.aligner import FaceAligner
    from tddfa_edge.runtime.bundle import Bundle
    from tddfa_edge.runtime.crop import crop_boxes_from_face_boxes

    with np.load(frames_path, allow_pickle=False) as data:
        frames = [data[f"frame{i}"] for i in range(int(data["count"]))]
        boxes = [data[f"boxes{i}"] for i in range(int(data["count"]))]
    manifest = Bundle.open(bundle_path).manifest
    results: dict[str, np.ndarray] = {"machine": np.array(platform.machine())}
    aligner = FaceAligner.from_bundle(bundle_path)
    crops = np.concatenate([aligner.crops(f, crop_boxes_from_face_boxes(bx)) for f, bx in zip(frames, boxes) if len(bx)])
    results["crops"] = crops
    for record in manifest.models_of("regressor"):
        a = FaceAligner.from_bundle(bundle_path, regressor_variant=record.variant, verify=False)
        results[f"regressor/{record.variant}/raw"] = a.regressor(crops)[0]
        results[f"regressor/{record.variant}/landmarks"] = a.morphable_model.landmarks_in_crop(a.regress_crops(crops))
    for record in manifest.models_of("detector"):
        a = FaceAligner.from_bundle(bundle_path, detector_variant=record.variant, verify=False)
        for i, frame in enumerate(frames):
            results[f"detector/{record.variant}/{i}"] = a.detect(frame).boxes
    for i, frame in enumerate(frames):
        faces = aligner(frame)
        results[f"pipeline/{i}/landmarks"] = np.stack([f.landmarks_68 for f in faces]) if faces else np.zeros((0, 68, 3), np.float32)
        results[f"pipeline/{i}/crop_boxes"] = np.stack([f.crop_box for f in faces]) if faces else np.zeros((0, 4))
    np.savez(out_path, **results)
    print(f"{platform.machine()}: {len(manifest.models_of('regressor'))} regressor and {len(manifest.models_of('detector'))} "
          "detector variants run")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
