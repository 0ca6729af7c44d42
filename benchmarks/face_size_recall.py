"""Face detector recall by face width on synthetic multi-scale frames (any detector, numpy + OpenCV only).

The detector owns the frame time and is the stage that loses small faces, so every detector / input size
choice needs the same question answered: *which face widths does it still find?*  This module builds a
deterministic set of 1280x720 frames in which faces of every width from 16 to 320 px appear in roughly
equal numbers, each with an exactly known ground-truth box, and scores any ``detect(frame)`` callable on it.

Data: ``aflw2000-3d-originals/`` (700 AFLW2000-3D original photos, one annotated face each). The data README
reserves these photos for detector development and end-to-end checks; they are NEVER to be used for
quantization calibration or tuning (use ``calibration/`` for that), and the 120x120 AFLW2000-3D benchmark
stays the headline accuracy number. ``gt.npz`` is checked against the README's sha256 before use.

Frame construction (``build_multiscale_frames``) and what keeps it honest
--------------------------------------------------------------------------
* Ground truth = the axis-aligned box of the face's 68 GT points (x/y), mapped exactly through the same
  crop + scale + translation that pastes the face (``cv2.resize`` maps the continuous pixel edges
  ``[0, n]`` onto ``[0, m]``, so a source coordinate ``x`` lands at ``(x - crop_x0) * m / n + paste_x0``).
  Widths are the widths of that box in frame pixels; bins (``WIDTH_BINS``) use them.
* Context: each face is pasted with its head, hair and shoulders: an elliptical region centred 0.1 h above
  the landmark box centre, semi-axes 1.0 x 1.25 times max(w, h) of the landmark box (a ~2 x 2.5 crop).
  A real small face has its whole scene around it, and small-face recall depends on it: with a tight
  0.65 x 0.75 context YuNet-n's 16-24 px recall at 640x384 falls from 0.29 to 0.05. Keep these constants
  fixed when comparing detectors, and across releases.
* No edge artefacts: the region is alpha-blended, fully opaque inside 70 % of the ellipse radius and
  fading smoothly (smoothstep) to 0 at the ellipse, so no rectangle edge exists around a face. Pixels that
  the source photo does not have (outside the 450x450 image, or its black letterbox bands, which ~60 % of
  the originals carry) are transparent too and also fade in smoothly, so the bands never appear as edges.
* Unannotated faces: other people appear in a few originals (an upright face detector finds one away from
  the annotated face in ~2 % of them), usually beside the annotated face. The ellipse is narrow
  sideways (full opacity only to 0.7 x max(w, h) from the centre) so a neighbour is at most a faded half
  face. No detector is used to screen the photos (that would bias the study toward that detector), so
  whatever remains counts as a false positive in ``recall_by_width``: FP/frame is an upper bound.
* Scaling: ``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when enlarging (the 160-320 bin enlarges the
  ~125-275 px source faces up to ~2.6x, so the largest faces are slightly soft, as in a real upscale).
* Background: photographic clutter from the same originals but far from their faces: 64x64 patches that
  avoid the annotated head (landmark box grown by 0.35 w sideways, 0.6 h up, 0.35 h down) and the black
  bands, with some texture (grey std >= 8: a quilt of flat studio walls would be an easy background),
  enlarged 1.25x to 80 px and overlap-added with linear ramps that sum to 1 (no seams). Every patch is
  rotated by 90, 180 or 270 degrees (never upright) and randomly mirrored, so that a bystander inside a
  patch is not an upright face: the background contributes texture, edges, skin and hair, not faces.
  (It still holds rare rotated eye regions of bystanders; YuNet-n fires on a few: most of its ~0.1
  FP/frame come from the background, 0.01 FP/frame on a flat grey one.)
* Layout: one face per width bin per frame (the 7 bins -> 7 faces), target widths log-uniform inside the
  bin, sources drawn without replacement from a seeded permutation (each original is used ~1.6 times at
  the default size, at different scales; never twice in one frame). Faces are placed largest first at
  random positions; the bounding rectangles of their context ellipses do not overlap (so neither faces nor
  contexts overlap) and every landmark box lies inside the frame.
* Determinism: everything random comes from ``numpy.random.default_rng(seed)`` (the background patch pool
  from a fixed seed of its own); OpenCV's resize, blend and accumulate are deterministic, so the same seed
  gives byte-identical frames on one machine (JPEG decoding may differ across libjpeg builds: compare
  frames on the same OpenCV build). Frame ``i`` does not depend on the number of frames asked for.
* Cost: the 700 photos are read, checked (sha256) and decoded once per process (~1.6-1.8 s, 17 MB of JPEG
  plus ~30 MB of background patches kept); the default 150 frames (1050 faces) then take ~7 s of one x86
  core (measured on a shared 2-core EPYC under load) and 415 MB as a list (2.8 MB a frame):
  ``iter_multiscale_frames`` makes the same frames one at a time in constant memory.

Scoring (``recall_by_width``)
----------------------------
One-to-one greedy matching, highest IoU first, between GT boxes and detections with IoU >= ``iou_min``.
The default ``iou_min = 0.3`` is the team's earlier probe's convention and deliberately looser than the
usual 0.5: the ground truth is the box of the 68 landmarks, which runs from the eyebrows to the chin and
between the jaw contour points, while detectors are trained on boxes that include the forehead and often
hair (FaceBoxes: WIDER FACE boxes; YuNet: its own WIDER-based labels) and are drawn larger than and shifted
up from the landmark box (a matched detection typically has 1.1-1.3x the landmark box's side and its centre
0.1-0.2 h higher). A correct detection of a frontal face then has an IoU of ~0.5-0.7 with the landmark box,
and of a profile face (narrow landmark box, wide detector box) often well under 0.5; 0.3 counts those
correct detections while still rejecting a box on the neighbouring face or a box of the wrong scale (a box
twice as large as the face has IoU <= 0.25). The report gives the median IoU and box side ratios of the
matches, so users see how differently their detector draws boxes (YuNet-n: side ratio 1.14, as wide as
the landmark box but 1.33x as tall and centred 0.15 h higher; median IoU 0.67). Detections matching no GT
box are false positives (reported per frame).

Score thresholds matter as much as input sizes: report the detector's threshold beside the table (YuNet-n
at 640x384 on the default frames, 16-24 px recall: 0.36 / 0.29 / 0.17 / 0.10 / 0.00 at score 0.5 / 0.6 /
0.7 / 0.8 / 0.9; OpenCV's ``FaceDetectorYN`` defaults to 0.9).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from tddfa_edge.datasets.locate import resolve_data_file
from tddfa_edge.runtime.boxes import match_boxes

WIDTH_BINS: tuple[tuple[int, int], ...] = ((16, 24), (24, 32), (32, 48), (48, 64), (64, 96), (96, 160), (160, 320))
FRAME_SIZE = (1280, 720)
DEFAULT_FRAMES = 150  # one face per width bin per frame -> 150 faces per bin, 1050 faces
ORIGINALS = "aflw2000-3d-originals"
GT_SHA256 = "483dfa72cb737797ec7a1e0a257c0c3d6708d92cef284de879a416feb8ef3e98"
IMAGES_SHA256 = "846104227b5fc5edf96073813fc69701e73ce4696cc061d0f9051f169c8661ae"  # (cd images && sha256sum *.jpg) | sha256sum

# Context ellipse around a face, in units of m = max(w, h) of its landmark box.
CENTRE_UP = 0.10       # ellipse centre above the landmark box centre, in landmark box heights
CONTEXT_X = 1.00       # horizontal semi-axis / m
CONTEXT_Y = 1.25       # vertical semi-axis / m
OPAQUE = 0.70          # alpha = 1 inside this fraction of the ellipse radius, smoothstep to 0 at the ellipse
# Background patches.
PATCH = 64             # source patch side
TILE = 80              # tile side in the frame
TILE_STEP = 64         # tile pitch (TILE - TILE_STEP = blend width)
PATCHES_PER_IMAGE = 4
MIN_PATCH_STD = 8.0    # grey-level standard deviation a background patch needs (drops flat walls and sky)
ALPHA_GRID = 160       # alpha masks of larger patches are computed at this size and enlarged (they are smooth)


@dataclass(frozen=True)
class StudyFrame:
    """One study frame: BGR uint8 ``image`` (H, W, 3), GT ``boxes`` (M, 4) x1, y1, x2, y2 in frame pixels
    (box of the 68 GT points), their ``widths`` (M,), and the source photo of each face (``sources``)."""

    image: np.ndarray
    boxes: np.ndarray
    widths: np.ndarray
    sources: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------------------------------
# data

def _content_box(img: np.ndarray, level: int = 20, inset: int = 2) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1 of the photo without its black letterbox bands (the bounding box of the pixels with a
    channel above ``level``), shrunk by ``inset`` px where a band was cut, against JPEG ringing at its edge."""
    bright = cv2.bitwise_not(cv2.inRange(img, (0, 0, 0), (level, level, level)))
    x, y, bw, bh = cv2.boundingRect(bright)
    if bw == 0 or bh == 0:
        return 0, 0, 0, 0
    h, w = img.shape[:2]
    x0, y0, x1, y1 = x, y, x + bw, y + bh
    x0, y0 = (x0 + inset if x0 > 0 else 0), (y0 + inset if y0 > 0 else 0)
    x1, y1 = (x1 - inset if x1 < w else w), (y1 - inset if y1 < h else h)
    return x0, y0, x1, y1


@dataclass(frozen=True)
class _Pool:
    names: tuple[str, ...]
    jpegs: tuple[bytes, ...]
    boxes: np.ndarray        # (N, 4) landmark boxes in source pixels
    content: np.ndarray      # (N, 4) content boxes (no black bands)
    eligible: np.ndarray     # indices of faces usable for pasting
    tiles: np.ndarray        # (T, TILE, TILE, 3) uint8 background patches, already enlarged to the tile size


@lru_cache(maxsize=2)
def _pool(data_dir: str) -> _Pool:
    """The originals (JPEG bytes, checked against the README's sha256), their landmark and content boxes, the
    faces usable for pasting, and the background patches. Once per process and data folder (~47 MB)."""
    root = Path(data_dir) / ORIGINALS
    gt_bytes = (root / "gt.npz").read_bytes()
    if hashlib.sha256(gt_bytes).hexdigest() != GT_SHA256:
        raise ValueError(f"{root / 'gt.npz'} is not the expected file (sha256 differs from the data README)")
    with np.load(io.BytesIO(gt_bytes), allow_pickle=False) as gt:
        names = [str(n) for n in gt["names"]]
        pts = gt["pts68"].astype(np.float64)
    order = sorted(range(len(names)), key=lambda i: names[i])
    listing, jpegs = [], {}
    for i in order:
        data = (root / "images" / names[i]).read_bytes()
        jpegs[names[i]] = data
        listing.append(f"{hashlib.sha256(data).hexdigest()}  {names[i]}\n")
    if hashlib.sha256("".join(listing).encode()).hexdigest() != IMAGES_SHA256:
        raise ValueError(f"{root / 'images'} does not hold the expected 700 originals (sha256 differs from the data README)")

    boxes = np.stack([pts[:, 0].min(1), pts[:, 1].min(1), pts[:, 0].max(1), pts[:, 1].max(1)], axis=1)
    rng = np.random.default_rng(20261130)  # fixed: the pool is the same for every frame seed
    content, tiles, eligible = [], [], []
    for i, name in enumerate(names):
        img = cv2.imdecode(np.frombuffer(jpegs[name], np.uint8), cv2.IMREAD_COLOR)
        cx0, cy0, cx1, cy1 = _content_box(img)
        content.append((cx0, cy0, cx1, cy1))
        x0, y0, x1, y1 = boxes[i]
        w, h = x1 - x0, y1 - y0
        if x0 >= cx0 + 1 and y0 >= cy0 + 1 and x1 <= cx1 - 1 and y1 <= cy1 - 1 and min(w, h) >= 32:
            eligible.append(i)
        # background patches: inside the content, clear of the annotated head
        hx0, hy0, hx1, hy1 = x0 - 0.35 * w, y0 - 0.6 * h, x1 + 0.35 * w, y1 + 0.35 * h
        ys, xs = np.meshgrid(np.arange(cy0, cy1 - PATCH + 1, 8), np.arange(cx0, cx1 - PATCH + 1, 8), indexing="ij")
        clear = (xs + PATCH <= hx0) | (xs >= hx1) | (ys + PATCH <= hy0) | (ys >= hy1)
        cand = np.stack([xs[clear], ys[clear]], axis=1)
        taken = 0
        for j in rng.permutation(len(cand))[:48]:
            x, y = (int(v) for v in cand[j])
            patch = img[y:y + PATCH, x:x + PATCH]
            # textured patches only: a quilt of flat studio walls would be an unrealistically easy background
            if float(cv2.meanStdDev(cv2.cvtColor(patch, cv2.COLOR_BGR2GRAY))[1][0, 0]) < MIN_PATCH_STD:
                continue
            tiles.append(cv2.resize(patch, (TILE, TILE), interpolation=cv2.INTER_LINEAR))
            taken += 1
            if taken == PATCHES_PER_IMAGE:
                break
    return _Pool(tuple(names), tuple(jpegs[n] for n in names), boxes, np.asarray(content, np.int64),
                 np.asarray(eligible, np.int64), np.stack(tiles))


# --------------------------------------------------------------------------------------------------
# frame construction

def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class _Background:
    """Photographic clutter: rotated, mirrored background patches on a TILE_STEP grid, overlap-added with linear
    ramps that sum to 1 (no seams). Tiles of one parity class (row % 2, column % 2) never overlap, so each
    class is a plain mosaic times a fixed weight map. Integer weights (1-D ramps u and 15 - u, 2-D products
    summing to 225 everywhere) keep it to four exact OpenCV multiply-accumulates per frame; buffers are reused."""

    LEVELS = 15

    def __init__(self, tiles: np.ndarray, size: tuple[int, int]) -> None:
        self.tiles, (self.w, self.h) = tiles, size
        self.off = TILE - TILE_STEP  # the grid starts outside the frame: the frame edge never sees a half ramp
        self.nx = math.ceil((self.w + self.off) / TILE_STEP)
        self.ny = math.ceil((self.h + self.off) / TILE_STEP)
        gh, gw = self.ny * TILE_STEP + TILE, self.nx * TILE_STEP + TILE
        blend = self.off
        up = np.round((np.arange(blend) + 0.5) * self.LEVELS / blend).astype(np.int64)
        ramp = np.full(TILE, self.LEVELS, np.int64)
        ramp[:blend], ramp[TILE - blend:] = up, self.LEVELS - up
        win = (slice(self.off, self.off + self.h), slice(self.off, self.off + self.w))
        self.mosaics, self.weights = [], []
        for pr in (0, 1):
            for pc in (0, 1):
                wy, wx = np.zeros(gh, np.int64), np.zeros(gw, np.int64)
                for r in range(pr, self.ny, 2):
                    wy[r * TILE_STEP:r * TILE_STEP + TILE] = ramp
                for c in range(pc, self.nx, 2):
                    wx[c * TILE_STEP:c * TILE_STEP + TILE] = ramp
                weight = (wy[:, None] * wx[None, :])[win].astype(np.uint8)
                self.weights.append(np.ascontiguousarray(np.repeat(weight[..., None], 3, axis=2)))
                self.mosaics.append(np.zeros((gh, gw, 3), np.uint8))
        total = sum(w.astype(np.int64) for w in self.weights)
        assert (total == self.LEVELS ** 2).all(), "background tile weights must sum to 1"
        self.win = win
        self.acc = np.zeros((self.h, self.w, 3), np.float32)

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """A new uint8 (H, W, 3) background."""
        n = self.nx * self.ny
        picks = rng.integers(0, len(self.tiles), size=n)
        rots = rng.integers(0, 3, size=n)  # 90, 180 or 270 degrees: never upright
        flips = rng.integers(0, 2, size=n)
        codes = (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_180, cv2.ROTATE_90_COUNTERCLOCKWISE)
        k = 0
        for r in range(self.ny):
            for c in range(self.nx):
                tile = cv2.rotate(self.tiles[picks[k]], codes[rots[k]])
                if flips[k]:
                    tile = cv2.flip(tile, 1)
                y, x = r * TILE_STEP, c * TILE_STEP
                self.mosaics[(r % 2) * 2 + c % 2][y:y + TILE, x:x + TILE] = tile
                k += 1
        acc = self.acc
        acc.fill(0.0)
        for mosaic, weight in zip(self.mosaics, self.weights, strict=True):
            cv2.accumulateProduct(mosaic[self.win], weight, acc)
        return cv2.convertScaleAbs(acc, alpha=1.0 / self.LEVELS ** 2)


@dataclass
class _Face:
    src: int            # index into the pool
    patch: np.ndarray   # uint8 (ph, pw, 3)
    alpha: np.ndarray   # float32 (ph, pw) opacity of the patch
    box: np.ndarray     # landmark box in patch coordinates (4,)
    valid: np.ndarray   # rectangle of the patch the source photo has pixels for (not outside it, not a black band)


def _make_face(pool: _Pool, src: int, target_width: float, lo: float, hi: float) -> _Face:
    """The context patch of face ``src`` scaled so its landmark box is ``target_width`` wide (kept in [lo, hi))."""
    img = cv2.imdecode(np.frombuffer(pool.jpegs[src], np.uint8), cv2.IMREAD_COLOR)
    H, W = img.shape[:2]
    x0, y0, x1, y1 = pool.boxes[src]
    w, h = x1 - x0, y1 - y0
    m = max(w, h)
    ex, ey = (x0 + x1) / 2, (y0 + y1) / 2 - CENTRE_UP * h
    ax, ay = CONTEXT_X * m, CONTEXT_Y * m
    sx0, sy0 = math.floor(ex - ax), math.floor(ey - ay)
    sx1, sy1 = math.ceil(ex + ax), math.ceil(ey + ay)
    cw, ch = sx1 - sx0, sy1 - sy0
    crop = np.zeros((ch, cw, 3), np.uint8)
    ix0, iy0, ix1, iy1 = max(sx0, 0), max(sy0, 0), min(sx1, W), min(sy1, H)
    crop[iy0 - sy0:iy1 - sy0, ix0 - sx0:ix1 - sx0] = img[iy0:iy1, ix0:ix1]
    # pixels the source photo really has: inside the image and its content box (no black bands)
    cx0, cy0, cx1, cy1 = pool.content[src]
    vx0, vy0, vx1, vy1 = max(0, cx0), max(0, cy0), min(W, cx1), min(H, cy1)

    # integer patch size; the exact per-axis scale follows from it. Nudge so the box width stays in its bin.
    s = target_width / w
    dw = max(2, round(cw * s))
    while w * dw / cw >= hi and dw > 2:
        dw -= 1
    while w * dw / cw < lo:
        dw += 1
    sxs = dw / cw
    dh = max(2, round(ch * sxs))
    sys_ = dh / ch
    interp = cv2.INTER_AREA if sxs < 1.0 else cv2.INTER_LINEAR
    patch = cv2.resize(crop, (dw, dh), interpolation=interp)

    # alpha is smooth: compute it on a grid of at most ALPHA_GRID px and enlarge it linearly
    f = min(1.0, ALPHA_GRID / max(dw, dh))
    gw, gh = max(2, round(dw * f)), max(2, round(dh * f))
    xx = ((np.arange(gw, dtype=np.float32) + 0.5) * (dw / gw))[None, :]
    yy = ((np.arange(gh, dtype=np.float32) + 0.5) * (dh / gh))[:, None]
    r = np.sqrt(((xx - (ex - sx0) * sxs) / (ax * sxs)) ** 2 + ((yy - (ey - sy0) * sys_) / (ay * sys_)) ** 2)
    alpha = 1.0 - _smoothstep((r - OPAQUE) / (1.0 - OPAQUE))
    if not (vx0 <= sx0 and vy0 <= sy0 and vx1 >= sx1 and vy1 >= sy1):
        # fade in from the edge of the valid rectangle (distance to its boundary, in patch pixels)
        ramp = max(4.0, 0.08 * (ax * sxs))
        dist = np.minimum(np.minimum(xx - (vx0 - sx0) * sxs, (vx1 - sx0) * sxs - xx),
                          np.minimum(yy - (vy0 - sy0) * sys_, (vy1 - sy0) * sys_ - yy))
        alpha = alpha * _smoothstep(dist / ramp)
    alpha = alpha.astype(np.float32)
    if (gw, gh) != (dw, dh):
        alpha = cv2.resize(alpha, (dw, dh), interpolation=cv2.INTER_LINEAR)
    box = np.array([(x0 - sx0) * sxs, (y0 - sy0) * sys_, (x1 - sx0) * sxs, (y1 - sy0) * sys_])
    valid = np.array([(vx0 - sx0) * sxs, (vy0 - sy0) * sys_, (vx1 - sx0) * sxs, (vy1 - sy0) * sys_])
    return _Face(src, patch, alpha, box, valid)


def _layout(rng: np.random.Generator, faces: list[_Face], size: tuple[int, int], tries: int = 60,
            layouts: int = 20) -> list[tuple[_Face, int, int]]:
    """Top-left positions, largest first: context rectangles disjoint, landmark boxes inside the frame.
    Retries the whole layout when a face does not fit; faces that never fit are dropped."""
    w, h = size
    order = sorted(faces, key=lambda f: -f.patch.shape[0] * f.patch.shape[1])
    best: list[tuple[_Face, int, int]] = []
    for _ in range(layouts):
        placed: list[tuple[_Face, int, int]] = []
        rects: list[tuple[int, int, int, int]] = []
        for f in order:
            ph, pw = f.patch.shape[:2]
            bx0, by0, bx1, by1 = f.box
            lo_x, hi_x = math.ceil(1 - bx0), math.floor(w - 1 - bx1)
            lo_y, hi_y = math.ceil(1 - by0), math.floor(h - 1 - by1)
            if lo_x > hi_x or lo_y > hi_y:
                continue
            for _t in range(tries):
                px, py = int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))
                rect = (max(px, 0), max(py, 0), min(px + pw, w), min(py + ph, h))
                if all(rect[0] >= q[2] or rect[2] <= q[0] or rect[1] >= q[3] or rect[3] <= q[1] for q in rects):
                    placed.append((f, px, py))
                    rects.append(rect)
                    break
        if len(placed) > len(best):
            best = placed
        if len(best) == len(faces):
            break
    return best


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def build_multiscale_frames(data_dir: str | os.PathLike | None = None, frames: int = DEFAULT_FRAMES,
                            size: tuple[int, int] = FRAME_SIZE, seed: int = 0,
                            bins: Sequence[tuple[float, float]] = WIDTH_BINS) -> list[StudyFrame]:
    """``frames`` study frames of ``size`` (w, h), one face per width bin each (see the module docstring)."""
    return list(iter_multiscale_frames(data_dir, frames, size, seed, bins))


def iter_multiscale_frames(data_dir: str | os.PathLike | None = None, frames: int = DEFAULT_FRAMES,
                           size: tuple[int, int] = FRAME_SIZE, seed: int = 0,
                           bins: Sequence[tuple[float, float]] = WIDTH_BINS) -> Iterator[StudyFrame]:
    """The same frames as ``build_multiscale_frames``, made one at a time (constant memory: for small devices)."""
    pool = _pool(str(resolve_data_file(f"{ORIGINALS}/gt.npz", data_dir).parent.parent))
    rng = np.random.default_rng(seed)
    w, h = size
    per_frame = len(bins)
    if len(pool.eligible) < per_frame:
        raise ValueError("not enough eligible faces")
    background = _Background(pool.tiles, (w, h))
    queue: list[int] = []
    for _ in range(frames):
        chosen: list[int] = []
        k = 0
        while len(chosen) < per_frame:  # the next distinct sources of a stream of seeded permutations
            if k >= len(queue):
                queue.extend(int(i) for i in rng.permutation(pool.eligible))
            if queue[k] in chosen:
                k += 1
            else:
                chosen.append(queue.pop(k))
        faces = []
        for (lo, hi), src in zip(bins, chosen, strict=True):
            # margin in log space so the integer patch size cannot push the width out of the bin
            width = _log_uniform(rng, lo * 1.01, hi * 0.99)
            faces.append(_make_face(pool, src, width, lo, hi))
        image = background(rng)
        placed = _layout(rng, faces, size)
        boxes = []
        for f, px, py in placed:
            ph, pw = f.patch.shape[:2]
            fx0, fy0, fx1, fy1 = max(px, 0), max(py, 0), min(px + pw, w), min(py + ph, h)
            a = np.ascontiguousarray(f.alpha[fy0 - py:fy1 - py, fx0 - px:fx1 - px])
            patch = np.ascontiguousarray(f.patch[fy0 - py:fy1 - py, fx0 - px:fx1 - px])
            region = np.ascontiguousarray(image[fy0:fy1, fx0:fx1])
            # alpha * patch + (1 - alpha) * background, rounded (a convex combination: stays in [0, 255])
            image[fy0:fy1, fx0:fx1] = cv2.blendLinear(patch, region, a, 1.0 - a)
            boxes.append(f.box + (px, py, px, py))
        boxes_arr = np.asarray(boxes, np.float64).reshape(-1, 4)
        frame = image
        yield StudyFrame(frame, boxes_arr, boxes_arr[:, 2] - boxes_arr[:, 0], tuple(pool.names[f.src] for f, _, _ in placed))


# --------------------------------------------------------------------------------------------------
# scoring

def wilson_interval(found: int, total: int, z: float = 1.96) -> tuple[float, float] | None:
    """95 % Wilson score interval of a recall ``found / total`` (at 150 faces a bin is good to about +-0.07)."""
    if total <= 0:
        return None
    p = found / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)


def _median(values) -> float | None:
    return round(float(np.median(values)), 4) if len(values) else None


def recall_by_width(detect: Callable[[np.ndarray], np.ndarray], frames: Iterable[StudyFrame], iou_min: float = 0.3,
                    bins: Sequence[tuple[float, float]] = WIDTH_BINS, timer: Callable[[], float] | None = time.perf_counter,
                    score_min: float | None = None) -> dict:
    """Recall per face-width bin of ``detect(frame.image) -> (N, 5+) x1, y1, x2, y2, score[, ...]`` (frame pixels).

    Returns a dict: ``recall`` overall, ``bins`` (one row per bin: ``range``, ``faces``, ``found``, ``recall``,
    ``recall_ci95`` (Wilson), ``median_iou``, ``median_side_ratio``), ``fp`` and ``fp_per_frame`` (detections
    matching no GT box), ``fp_on_faces`` (those of them centred inside a GT box: a duplicate or a box too far
    off, typically on a profile face),
    ``median_iou``, ``median_side_ratio`` (sqrt(area) of the detection / of the 68-point box),
    ``median_width_ratio``, ``median_height_ratio``, ``median_centre_dy`` (detection centre minus GT centre, in
    GT heights; negative = higher), and ``detector_ms`` (median wall time per ``detect`` call when ``timer``
    is given: detector plus whatever pre/post-processing ``detect`` does; ``detector_ms_p90`` too; the first call
    is included, the median makes it harmless). ``score_min`` drops detections
    below it before matching.
    """
    bins = [tuple(b) for b in bins]
    faces = np.zeros(len(bins), np.int64)
    found = np.zeros(len(bins), np.int64)
    per_bin: list[dict[str, list[float]]] = [{"iou": [], "side": []} for _ in bins]
    ious, side, wr, hr, dy, times = [], [], [], [], [], []
    fp = fp_on_faces = total_faces = total_found = outside = n = 0
    for frame in frames:
        n += 1
        if timer is not None:
            t0 = timer()
            det = detect(frame.image)
            times.append(timer() - t0)
        else:
            det = detect(frame.image)
        det = np.asarray(det, np.float64)
        det = det.reshape(-1, det.shape[-1]) if det.size else np.zeros((0, 5))
        if score_min is not None and det.shape[1] > 4:
            det = det[det[:, 4] >= score_min]
        truth = np.asarray(frame.boxes, np.float64).reshape(-1, 4)
        widths = truth[:, 2] - truth[:, 0]
        which = np.full(len(truth), -1)
        for b, (lo, hi) in enumerate(bins):
            which[(widths >= lo) & (widths < hi)] = b
        outside += int((which < 0).sum())
        for b in range(len(bins)):
            faces[b] += int((which == b).sum())
        pairs = match_boxes(truth, det, iou_min).pairs
        total_faces += len(truth)
        total_found += len(pairs)
        fp += len(det) - len(pairs)
        matched = {j for _, j, _ in pairs}
        for j in range(len(det)):
            if j not in matched:
                cx, cy = (det[j, 0] + det[j, 2]) / 2, (det[j, 1] + det[j, 3]) / 2
                inside = (truth[:, 0] <= cx) & (cx <= truth[:, 2]) & (truth[:, 1] <= cy) & (cy <= truth[:, 3])
                fp_on_faces += bool(inside.any())
        for i, j, v in pairs:
            t, d = truth[i], det[j]
            tw, th, dw, dh = t[2] - t[0], t[3] - t[1], d[2] - d[0], d[3] - d[1]
            ratio = math.sqrt(max(dw * dh, 0.0) / max(tw * th, 1e-9))
            ious.append(v)
            side.append(ratio)
            wr.append(dw / max(tw, 1e-9))
            hr.append(dh / max(th, 1e-9))
            dy.append(((d[1] + d[3]) - (t[1] + t[3])) / 2 / max(th, 1e-9))
            if which[i] >= 0:
                found[which[i]] += 1
                per_bin[which[i]]["iou"].append(v)
                per_bin[which[i]]["side"].append(ratio)
    rows = []
    for b, (lo, hi) in enumerate(bins):
        rows.append({"range": f"{lo:g}-{hi:g}", "lo": lo, "hi": hi, "faces": int(faces[b]), "found": int(found[b]),
                     "recall": round(float(found[b] / faces[b]), 4) if faces[b] else None,
                     "recall_ci95": wilson_interval(int(found[b]), int(faces[b])),
                     "median_iou": _median(per_bin[b]["iou"]), "median_side_ratio": _median(per_bin[b]["side"])})
    return {
        "iou_min": iou_min,
        "frames": n,
        "faces": total_faces,
        "found": total_found,
        "recall": round(total_found / total_faces, 4) if total_faces else None,
        "bins": rows,
        "faces_outside_bins": outside,
        "fp": fp,
        "fp_per_frame": round(fp / n, 4) if n else None,
        "fp_on_faces": fp_on_faces,
        "median_iou": _median(ious),
        "median_side_ratio": _median(side),
        "median_width_ratio": _median(wr),
        "median_height_ratio": _median(hr),
        "median_centre_dy": _median(dy),
        "detector_ms": round(float(np.median(times)) * 1e3, 3) if times else None,
        "detector_ms_p90": round(float(np.percentile(times, 90)) * 1e3, 3) if times else None,
    }


def markdown_table(results: dict[str, dict]) -> str:
    """Markdown table, one row per labelled ``recall_by_width`` result (same bins for all)."""
    first = next(iter(results.values()))
    head = ["detector / input"] + [f"{r['range']} px" for r in first["bins"]]
    head += ["all", "FP/frame", "IoU p50", "side ratio p50", "ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, res in results.items():
        cells = [label] + [f"{r['recall']:.2f}" if r["recall"] is not None else "-" for r in res["bins"]]
        cells += [f"{res['recall']:.3f}", f"{res['fp_per_frame']:.2f}", f"{res['median_iou'] or 0:.2f}",
                  f"{res['median_side_ratio'] or 0:.2f}", f"{res['detector_ms']:.1f}" if res["detector_ms"] is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
