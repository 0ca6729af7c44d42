"""Run every model variant of a bundle on fixed frames and save the raw results (for x86 vs aarch64 checks).

    python cross_platform_probe.py BUNDLE FRAMES.npz OUT.npz

Runs in-process only (the aarch64 guest under qemu cannot spawn processes). For each regressor variant:
landmarks and raw outputs on the given crops. For each detector variant: boxes on the given frames.
For the bundle's default pipeline: the faces found on each frame.
"""

from __future__ import annotations

import platform
import sys
import warnings

import numpy as np


def main(bundle_path: str, frames_path: str, out_path: str) -> int:
    warnings.simplefilter("ignore")
    from tddfa_edge.runtime.aligner import FaceAligner
    from tddfa_edge.runtime.bundle import Bundle
    from tddfa_edge.runtime.crop import crop_box_from_face_box

    with np.load(frames_path, allow_pickle=False) as data:
        frames = [data[f"frame{i}"] for i in range(int(data["count"]))]
        boxes = [data[f"boxes{i}"] for i in range(int(data["count"]))]
    bundle = Bundle.open(bundle_path)
    results: dict[str, np.ndarray] = {"machine": np.array(platform.machine())}
    aligner = FaceAligner.from_bundle(bundle_path)
    crops = np.concatenate([aligner.crops(f, np.stack([crop_box_from_face_box(b) for b in bx])) for f, bx in zip(frames, boxes) if len(bx)])
    results["crops"] = crops
    for entry in bundle.models("regressor"):
        try:
            a = FaceAligner.from_bundle(bundle_path, regressor_variant=entry.variant, verify=False)
        except Exception as exc:  # a backend missing in this environment is reported, not fatal
            results[f"error/regressor/{entry.variant}"] = np.array(str(exc))
            continue
        raw = a.regressor(crops)[0]
        results[f"regressor/{entry.variant}/raw"] = raw
        params = a.regress_crops(crops)
        results[f"regressor/{entry.variant}/landmarks"] = a.morphable_model.landmarks_in_crop(params)
    for entry in bundle.models("detector"):
        try:
            a = FaceAligner.from_bundle(bundle_path, detector_variant=entry.variant, verify=False)
        except Exception as exc:
            results[f"error/detector/{entry.variant}"] = np.array(str(exc))
            continue
        for i, frame in enumerate(frames):
            results[f"detector/{entry.variant}/{i}"] = a.detect(frame)
    for i, frame in enumerate(frames):
        faces = aligner(frame)
        results[f"pipeline/{i}"] = np.stack([f.landmarks_68 for f in faces]) if faces else np.zeros((0, 68, 3), np.float32)
    np.savez(out_path, **results)
    print(f"{platform.machine()}: {sum(k.startswith('regressor/') for k in results) // 2} regressor and "
          f"{len({k.split('/')[1] for k in results if k.startswith('detector/')})} detector variants run")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
