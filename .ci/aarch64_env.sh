#!/usr/bin/env bash
# Build (or reuse) the cached aarch64 user-mode emulation environment in which CI runs the runtime
# tests as a Raspberry Pi 4 (Cortex-A72) or Pi 5 (Cortex-A76) would. Correctness only: emulated
# timings mean nothing. Idempotent: a complete cache is reused in well under a second.
#
#   bash .ci/aarch64_env.sh            # build what is missing, print what it did and timings
#   bash .ci/aarch64_env.sh --force    # rebuild everything
#   bash .ci/aarch64_env.sh --verify   # also import-check every --cpu x --site combination and
#                                      # run an offline `pip install` of numpy inside the guest
# Then run guest Python with .ci/aarch64_python (see there).
#
# Layout of ${TDDFA_EDGE_CACHE:-$HOME/.cache/tddfa-edge}/aarch64/:
#   rootfs/               Debian bookworm arm64, `mmdebstrap --variant=extract` (python3, libstdc++6,
#                         python3-pip); dev/ and tmp/ removed so the guest sees the host's (see
#                         aarch64_python on -L); proc/cpuinfo = Pi 4 (plain `-L rootfs` acts as a Pi 4)
#   cpuinfo/cortex-a7{2,6}  Raspberry Pi 4 / Pi 5 /proc/cpuinfo
#   views/cortex-a7{2,6}/ what `qemu -L` points at: symlinks to rootfs/* plus a real proc/cpuinfo of
#                         that CPU, so Pi 4 and Pi 5 runs can go concurrently without swapping a file
#   wheelhouse/{modern,legacy}/  the aarch64 cp311 .whl files (for offline pip tests in the guest)
#   site/{modern,legacy}/        `pip install --target` of those wheels (the guest's PYTHONPATH)
#   stamp                 recipe of the complete environment; a match means "reuse"
#
# Why the cpuinfo: onnxruntime (and XNNPACK in ai-edge-litert) parse /proc/cpuinfo through the
# cpuinfo library; qemu 7.2 (Debian 12) passes the host's x86 file through and onnxruntime
# segfaults at import. The ISA features come from the auxv HWCAPs, which QEMU_CPU sets; the
# "CPU part" gives the micro-architecture (0xd08 A72 / 0xd0b A76) used for uarch-tuned kernels.
set -euo pipefail

RECIPE_VERSION=1
SUITE=bookworm
INCLUDE=python3,libstdc++6,python3-pip
# Versions checked against PyPI for cp311 aarch64 (numpy 2.5 has no cp311 wheels).
MODERN=(numpy==2.4.6 onnxruntime==1.32.0 opencv-python-headless==5.0.0.93 ai-edge-litert==2.3.0 click==8.5.1)
# tflite-runtime 2.14 needs numpy<2; opencv-python-headless 4.12+ needs numpy>=2, 4.11.0.86 takes
# both; onnxruntime 1.32 declares numpy>=1.21.6 and runs with 1.26 (checked under emulation).
LEGACY=(numpy==1.26.4 tflite-runtime==2.14.0 opencv-python-headless==4.11.0.86 onnxruntime==1.32.0 click==8.5.1)
# pip does not expand manylinux_2_X tags when --platform is given: list every glibc up to bookworm's
# 2.36 (Pi OS Bookworm), or ai-edge-litert (manylinux_2_27) and tflite-runtime (manylinux_2_34)
# are "not found".
PLATFORMS=(--platform manylinux2014_aarch64)
for minor in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${minor}_aarch64"); done
PIP_TARGET_FLAGS=("${PLATFORMS[@]}" --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311)

FORCE=0
VERIFY=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --verify) VERIFY=1 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "aarch64_env: unknown argument $arg" >&2; exit 2 ;;
    esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
AENV="${TDDFA_EDGE_CACHE:-$HOME/.cache/tddfa-edge}/aarch64"
T_START=$(date +%s%N)

log() { printf '[aarch64_env] %s\n' "$*"; }
now() { date +%s%N; }
secs() { local ms=$(( ($(date +%s%N) - $1) / 1000000 )); printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100)); }

# ---------------------------------------------------------------- host tools (not in the cache)
need_pkgs=()
command -v qemu-aarch64-static >/dev/null || need_pkgs+=(qemu-user-static)
command -v flock >/dev/null || need_pkgs+=(util-linux)
if [ ! -x "$AENV/rootfs/usr/bin/python3.11" ] || [ "$FORCE" = 1 ]; then
    command -v mmdebstrap >/dev/null || need_pkgs+=(mmdebstrap)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    t=$(now)
    if [ "$(id -u)" != 0 ]; then
        echo "aarch64_env: need root to apt-get install ${need_pkgs[*]}" >&2; exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    log "apt-get install ${need_pkgs[*]}: $(secs "$t")"
fi

# Host Python that runs `pip download/install --platform ...` (any CPython 3 with pip >= 22).
HOST_PY="${TDDFA_HOST_PYTHON:-}"
if [ -z "$HOST_PY" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then HOST_PY="$REPO/.venv/bin/python"; else HOST_PY=python3; fi
fi

# The recipe: any change to it rebuilds the parts it names.
rootfs_key="v$RECIPE_VERSION extract arm64 $SUITE $INCLUDE"
site_key() { echo "v$RECIPE_VERSION $* ${PIP_TARGET_FLAGS[*]}"; }
full_key="$(printf '%s\n' "$rootfs_key" "$(site_key "${MODERN[@]}")" "$(site_key "${LEGACY[@]}")" \
    "$(sha256sum "$HERE/aarch64_env.sh" | cut -c1-16)")"

mkdir -p "$AENV"
exec 9>"$AENV/.lock"
flock 9   # concurrent CI jobs / wrappers: one builder at a time

if [ "$FORCE" = 0 ] && [ -f "$AENV/stamp" ] && [ "$(cat "$AENV/stamp")" = "$full_key" ] && [ "$VERIFY" = 0 ]; then
    log "reusing complete environment in $AENV ($(secs "$T_START"))"
    exit 0
fi
[ "$FORCE" = 1 ] && rm -f "$AENV"/*.done "$AENV/stamp"

# step NAME KEY: true when the step must (re)run; done_step NAME KEY records success.
step() { [ "$(cat "$AENV/$1.done" 2>/dev/null)" != "$2" ]; }
done_step() { printf '%s' "$2" > "$AENV/$1.done"; }

# ---------------------------------------------------------------- Pi 4 / Pi 5 /proc/cpuinfo
write_cpuinfo() { # features variant part revision model board-revision serial
    local i
    for i in 0 1 2 3; do
        printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: %s\n\n' \
            "$i" "$1" "$2" "$3" "$4"
    done
    printf 'Revision\t: %s\nSerial\t\t: %s\nModel\t\t: %s\n' "$6" "$7" "$5"
}
mkdir -p "$AENV/cpuinfo"
# BCM2711: Cortex-A72 r0p3, no crypto extensions. BCM2712: Cortex-A76 r4p1 (dot product, fp16).
write_cpuinfo "fp asimd evtstrm crc32 cpuid" 0x0 0xd08 3 \
    "Raspberry Pi 4 Model B Rev 1.5" c03115 10000000a72a72a7 > "$AENV/cpuinfo/cortex-a72.new"
write_cpuinfo "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" \
    0x4 0xd0b 1 "Raspberry Pi 5 Model B Rev 1.0" d04170 a76a76a76a76a76a > "$AENV/cpuinfo/cortex-a76.new"
for c in cortex-a72 cortex-a76; do
    if cmp -s "$AENV/cpuinfo/$c.new" "$AENV/cpuinfo/$c"; then rm "$AENV/cpuinfo/$c.new"
    else mv "$AENV/cpuinfo/$c.new" "$AENV/cpuinfo/$c"; fi
done

# ---------------------------------------------------------------- rootfs
if step rootfs "$rootfs_key" || [ ! -x "$AENV/rootfs/usr/bin/python3.11" ]; then
    t=$(now)
    rm -rf "$AENV/rootfs" "$AENV/rootfs.tmp" "$AENV/views"
    mmdebstrap --quiet --variant=extract --include="$INCLUDE" --architectures=arm64 \
        "$SUITE" "$AENV/rootfs.tmp" >"$AENV/mmdebstrap.log" 2>&1 \
        || { cat "$AENV/mmdebstrap.log" >&2; exit 1; }
    # An existing dir under the -L prefix hides the host's: keep the host's /dev (real device
    # nodes even when mmdebstrap ran in unshare mode) and /tmp (tempfile, pytest tmp_path).
    rm -rf "$AENV/rootfs.tmp/dev" "$AENV/rootfs.tmp/tmp"
    mkdir -p "$AENV/rootfs.tmp/proc"
    cp "$AENV/cpuinfo/cortex-a72" "$AENV/rootfs.tmp/proc/cpuinfo"
    mv "$AENV/rootfs.tmp" "$AENV/rootfs"
    done_step rootfs "$rootfs_key"
    log "rootfs: mmdebstrap $SUITE arm64 ($INCLUDE): $(secs "$t"), $(du -sh "$AENV/rootfs" | cut -f1)"
else
    log "rootfs: reused"
fi
cmp -s "$AENV/cpuinfo/cortex-a72" "$AENV/rootfs/proc/cpuinfo" \
    || cp "$AENV/cpuinfo/cortex-a72" "$AENV/rootfs/proc/cpuinfo"

# ---------------------------------------------------------------- per-CPU views of the rootfs
for c in cortex-a72 cortex-a76; do
    v="$AENV/views/$c"
    mkdir -p "$v/proc"
    for e in "$AENV"/rootfs/*; do
        e=$(basename "$e")
        case "$e" in proc|dev|tmp) continue ;; esac
        [ -L "$v/$e" ] || ln -s "../../rootfs/$e" "$v/$e"
    done
    cmp -s "$AENV/cpuinfo/$c" "$v/proc/cpuinfo" || cp "$AENV/cpuinfo/$c" "$v/proc/cpuinfo"
done

# ---------------------------------------------------------------- wheelhouses and site dirs
build_site() { # NAME REQ...
    local name=$1; shift
    local key; key="$(site_key "$@")"
    if ! step "site-$name" "$key" && [ -d "$AENV/site/$name" ]; then
        log "site/$name: reused"; return
    fi
    local t; t=$(now)
    local wh="$AENV/wheelhouse/$name" site="$AENV/site/$name"
    rm -rf "$wh.tmp" "$site.tmp"
    mkdir -p "$AENV/wheelhouse" "$AENV/site"
    "$HOST_PY" -m pip download -q --disable-pip-version-check -d "$wh.tmp" "${PIP_TARGET_FLAGS[@]}" "$@" \
        2> >(grep -v "^WARNING: Location" >&2)
    local dl; dl=$(secs "$t"); local t2; t2=$(now)
    "$HOST_PY" -m pip install -q --disable-pip-version-check --no-warn-conflicts --no-index \
        --find-links "$wh.tmp" --target "$site.tmp" "${PIP_TARGET_FLAGS[@]}" "$@" \
        2> >(grep -v "^WARNING: Location" >&2)
    rm -rf "$wh" "$site"
    mv "$wh.tmp" "$wh"
    mv "$site.tmp" "$site"
    done_step "site-$name" "$key"
    log "site/$name: download $dl + install $(secs "$t2"): $(ls "$wh" | sed 's/-cp3.*\|-py[23].*//' | tr '\n' ' ')"
}
build_site modern "${MODERN[@]}"
build_site legacy "${LEGACY[@]}"

printf '%s' "$full_key" > "$AENV/stamp"
log "environment ready in $AENV ($(du -sh "$AENV" | cut -f1)), total $(secs "$T_START")"

# ---------------------------------------------------------------- optional verification
if [ "$VERIFY" = 1 ]; then
    flock -u 9
    PY="$HERE/aarch64_python"
    for c in cortex-a72 cortex-a76; do
        for s in modern legacy; do
            t=$(now)
            out=$("$PY" --cpu "$c" --site "$s" -c '
import platform, numpy, cv2, onnxruntime as ort
try:
    from ai_edge_litert.interpreter import Interpreter; tfl = "ai_edge_litert"
except ImportError:
    from tflite_runtime.interpreter import Interpreter; tfl = "tflite_runtime"
tv = __import__(tfl).__version__ if hasattr(__import__(tfl), "__version__") else "?"
print(platform.machine(), "numpy", numpy.__version__, "cv2", cv2.__version__, "onnxruntime", ort.__version__, tfl, tv)
' 2>&1) || { echo "$out" >&2; log "verify $c/$s: FAILED"; exit 1; }
            log "verify $c/$s: $out ($(secs "$t"))"
        done
    done
    t=$(now)
    tgt=$(mktemp -d)
    PIP_CONFIG_FILE=/dev/null "$PY" --site none -m pip install -q --disable-pip-version-check \
        --no-index --find-links "$AENV/wheelhouse/modern" --target "$tgt" numpy 2>&1 \
        | grep -v "Running pip as the 'root' user" || true
    out=$(TDDFA_EXTRA_PYTHONPATH="$tgt" "$PY" --site none -c \
        'import numpy; print("numpy", numpy.__version__, "from", numpy.__file__)') \
        || { log "verify guest pip: FAILED"; rm -rf "$tgt"; exit 1; }
    rm -rf "$tgt"
    log "verify guest pip (offline, --no-index --find-links wheelhouse/modern): $out ($(secs "$t"))"
fi
