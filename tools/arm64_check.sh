#!/usr/bin/env bash
# Install and run DeepFER edge on arm64 Debian (the Raspberry Pi OS base) under QEMU
# user emulation, and compare its events with this host's.
#
#   sudo tools/arm64_check.sh trixie      # or bookworm
#
# Needs root, a Debian/Ubuntu host, about 3 GB under WORKDIR and the network
# (deb.debian.org and PyPI). It installs debootstrap, qemu-user-static and
# binfmt-support when missing and registers qemu-aarch64 with binfmt_misc.
# It takes tens of minutes (see deploy/README.md), so the test suite only lints
# it (shellcheck).
#
# Two workarounds make the emulated Pi honest, both found the hard way:
#   QEMU_CPU=cortex-a72   a Pi 4 core; with QEMU's default CPU model the int8
#                         scores come out wrong;
#   /proc/cpuinfo         QEMU 7.2 shows the guest the host's x86 cpuinfo and
#                         LiteRT crashes on it, so an ARM one is bind-mounted in.
set -euo pipefail
umask 022

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")
MIRROR=${DEEPFER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_PYTHON=${DEEPFER_HOST_PYTHON:-python3}
# Debian's numpy and OpenCV are in the rootfs so that the install.sh-style venv
# sees them, as it would on Raspberry Pi OS.
GUEST_PACKAGES=python3,python3-venv,python3-numpy,python3-opencv,ca-certificates
START=$SECONDS

usage() {
    cat <<EOF
Usage: sudo $0 [--workdir DIR] RELEASE

RELEASE is bookworm or trixie (Debian 12 / 13, arm64: Raspberry Pi OS's base).

Builds an arm64 RELEASE root file system with debootstrap (kept in WORKDIR and
reused on the next run), installs the deepfer wheel built from this checkout in
two ways:
  sys    as deploy/install.sh does: a --system-site-packages venv beside Debian's
         python3-numpy and python3-opencv, numpy pinned to the system's
  plain  a plain venv, everything from PyPI wheels
and in each runs 'deepfer-edge check', the demo and a clip under QEMU emulating
a Cortex-A72 (Pi 4). The demo's and the clip's events (type, emotion,
confidence) must equal this host's: exit 0 when they do, 1 when not.

Options:
  --workdir DIR   where the rootfs, wheel and outputs live
                  (default /var/tmp/deepfer-arm64/RELEASE)
  -h, --help      show this help

Environment: DEEPFER_DEBIAN_MIRROR (default $MIRROR), DEEPFER_HOST_PYTHON
(default python3: builds the wheel and the host's reference venv).
EOF
}

say() { printf '==> [%s] %s\n' "$(elapsed)" "$*"; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}
elapsed() {
    local s=$((SECONDS - START))
    printf '%d:%02d' $((s / 60)) $((s % 60))
}

ROOTFS="" MOUNTED=()
cleanup() {
    local i
    # Unmount in reverse order; a busy mount is reported, never left silently.
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" || printf 'warning: cannot unmount %s\n' "${MOUNTED[i]}" >&2
    done
    MOUNTED=()
}

mount_in() {
    # mount_in TARGET MOUNT-ARGS...
    local target=$1
    shift
    mount "$@" "$target"
    MOUNTED+=("$target")
}

need_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [[ -x /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    if ((${#missing[@]})); then
        say "installing ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    "$HOST_PYTHON" -c 'import sys, venv; assert sys.version_info >= (3, 11)' 2>/dev/null ||
        die "$HOST_PYTHON is not a Python 3.11+ with venv; set DEEPFER_HOST_PYTHON or apt-get install python3-venv"
}

enable_binfmt() {
    # With binfmt_misc the kernel runs arm64 binaries through qemu-aarch64, which
    # also reads QEMU_CPU from each process's environment.
    if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
            die "cannot mount binfmt_misc (a container without it?); run on a VM or host with binfmt_misc"
    fi
    [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 ||
        die "cannot register qemu-aarch64 with binfmt_misc: update-binfmts --enable qemu-aarch64 failed"
    grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt entry qemu-aarch64 is disabled"
}

write_cpuinfo() {
    # A Raspberry Pi 4's /proc/cpuinfo (Cortex-A72: implementer 0x41, part 0xd08),
    # one entry per host CPU so that it agrees with /sys/devices/system/cpu.
    local file=$1 n i
    n=$(nproc)
    : >"$file"
    for ((i = 0; i < n; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i" >>"$file"
    done
    printf 'Hardware\t: BCM2835\nRevision\t: c03111\nSerial\t\t: 10000000deadbeef\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n' >>"$file"
}

build_rootfs() {
    if [[ -x $ROOTFS/usr/bin/python3 && -e $ROOTFS/.deepfer-rootfs-complete ]]; then
        say "reusing the $RELEASE arm64 root file system in $ROOTFS"
        return
    fi
    rm -rf "$ROOTFS"
    say "debootstrap $RELEASE arm64 into $ROOTFS (the slow part: every package is configured under emulation)"
    debootstrap --arch=arm64 --variant=minbase --include="$GUEST_PACKAGES" "$RELEASE" "$ROOTFS" "$MIRROR"
    touch "$ROOTFS/.deepfer-rootfs-complete"
}

host_reference() {
    local dist=$1 out=$2
    say "building the wheel from $REPO_DIR"
    rm -rf "$dist" && mkdir -p "$dist"
    "$HOST_PYTHON" -m pip wheel -q --no-deps -w "$dist" "$REPO_DIR"
    say "host reference: venv, demo, clip"
    rm -rf "$WORKDIR/host-venv"
    "$HOST_PYTHON" -m venv "$WORKDIR/host-venv"
    "$WORKDIR/host-venv/bin/python" -m pip install -q --disable-pip-version-check "$dist"/deepfer-*.whl
    mkdir -p "$out"
    # The clip is the demo written as a real video file, decoded by OpenCV's
    # FFmpeg. Lossless FFV1, because a lossy codec is not decoded bit for bit alike:
    # the same OpenCV 4.14 wheel decodes a Motion-JPEG frame up to 2 grey levels
    # differently on aarch64 and x86-64, enough to move a face box by 3 px.
    "$WORKDIR/host-venv/bin/python" - "$dist/clip.mkv" <<'EOF'
import sys

import cv2

from edge.demo import DemoClip

clip = DemoClip(120, 640, 480)
writer = cv2.VideoWriter(sys.argv[1], cv2.VideoWriter_fourcc(*"FFV1"), 15.0, (640, 480))
for i in range(clip.frames):
    writer.write(clip.frame(i))
writer.release()
EOF
    run_demos "$WORKDIR/host-venv/bin/deepfer-edge" "$dist/clip.mkv" "$out" >"$out/log.txt" 2>&1 ||
        die "the host's own run failed; see $out/log.txt"
}

# run_demos DEEPFER-EDGE CLIP OUTDIR: check, the demo and the clip; events as JSON lines.
# Shared with the guest through guest.sh (declare -f), so both run the same commands.
run_demos() {
    local exe=$1 clip=$2 out=$3
    export DEEPFER_CAMERA__DEMO_REALTIME=false # as fast as processed: no pacing, same frames
    "$exe" check --camera demo >"$out/check.txt" 2>&1 || {
        cat "$out/check.txt"
        return 1
    }
    "$exe" --camera demo --stdout >"$out/demo.jsonl" 2>"$out/demo.err" || {
        tail -5 "$out/demo.err"
        return 1
    }
    "$exe" --camera "$clip" --stdout >"$out/clip.jsonl" 2>"$out/clip.err" || {
        tail -5 "$out/clip.err"
        return 1
    }
}

guest_run() {
    local dist=$1
    mkdir -p "$ROOTFS/root/deepfer"
    cp -r "$REPO_DIR/deploy" "$ROOTFS/root/deepfer/"
    cp "$dist"/deepfer-*.whl "$dist/clip.mkv" "$ROOTFS/root/deepfer/"
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
    # Certificate authorities added on the host (a TLS-inspecting proxy's, say)
    # must be trusted in the guest too, or pip cannot reach PyPI from it.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
        cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
        chroot "$ROOTFS" /usr/sbin/update-ca-certificates >/dev/null
    fi
    write_cpuinfo "$WORKDIR/cpuinfo"
    mount_in "$ROOTFS/proc" -t proc proc
    mount_in "$ROOTFS/proc/cpuinfo" --bind "$WORKDIR/cpuinfo"
    mount_in "$ROOTFS/sys" --bind /sys
    mount_in "$ROOTFS/dev" --bind /dev
    {
        echo 'set -euo pipefail'
        declare -f run_demos
        cat <<'EOF'
cd /root/deepfer
wheel=$(ls deepfer-*.whl)
echo "guest: $(uname -m), $(. /etc/os-release && echo "$PRETTY_NAME"), $(python3 --version), Debian numpy $(python3 -c 'import numpy; print(numpy.__version__)')"
grep -m1 'CPU part' /proc/cpuinfo
# install.sh's own pinning logic (write_constraints), sourced, not copied.
# shellcheck disable=SC1091
DEEPFER_PREFIX=/root/sys-prefix DEEPFER_PYTHON=/usr/bin/python3 source deploy/install.sh
mkdir -p "$OPT_DIR"
write_constraints
for kind in sys plain; do
    rm -rf "/opt/$kind" "/root/out-$kind" && mkdir -p "/root/out-$kind"
    t0=$SECONDS
    if [[ $kind == sys ]]; then
        python3 -m venv --system-site-packages /opt/sys
        /opt/sys/bin/python -m pip install -q --disable-pip-version-check --constraint "$CONSTRAINTS" "./$wheel"
    else
        python3 -m venv /opt/plain
        /opt/plain/bin/python -m pip install -q --disable-pip-version-check "./$wheel"
    fi
    echo "guest $kind venv: installed in $((SECONDS - t0)) s: $("/opt/$kind/bin/python" -c 'import numpy, cv2, ai_edge_litert; from importlib.metadata import version as v; print("numpy", numpy.__version__, "from", numpy.__file__.split("/")[1], "| OpenCV", cv2.__version__, "| ai-edge-litert", v("ai-edge-litert"))')"
    t0=$SECONDS
    run_demos "/opt/$kind/bin/deepfer-edge" /root/deepfer/clip.mkv "/root/out-$kind"
    echo "guest $kind venv: check, demo and clip ran in $((SECONDS - t0)) s; check says: $(grep -i model "/root/out-$kind/check.txt" | head -1)"
done
EOF
    } >"$ROOTFS/root/guest.sh"
    say "in the arm64 guest (QEMU_CPU=cortex-a72): install two ways, check, demo, clip"
    chroot "$ROOTFS" /usr/bin/env -i QEMU_CPU=cortex-a72 HOME=/root LANG=C.UTF-8 \
        PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin /bin/bash /root/guest.sh
    cleanup
}

compare() {
    # Events in order: type, track, emotion (from→to, or the dominant one at the
    # end), confidence, and a track's per-emotion shares and frame count at its
    # end (the shares follow every frame's top class). Times and durations differ
    # between machines by nature; nothing else may.
    "$HOST_PYTHON" - "$@" <<'EOF'
import json
import sys

def events(path):
    out = []
    for line in open(path):
        msg = json.loads(line)
        if msg["topic"] != "events":
            continue
        p = msg["payload"]
        out.append((p["type"], p.get("track_id"), p.get("emotion") or p.get("to") or p.get("dominant"), p.get("from"),
                    p.get("confidence"), json.dumps(p.get("shares"), sort_keys=True), p.get("frames")))
    return out

host, *guests = sys.argv[1:]
ok = True
for name in ("demo", "clip"):
    ref = events(f"{host}/{name}.jsonl")
    for g in guests:
        got = events(f"{g}/{name}.jsonl")
        label = f"{g.rsplit('-', 1)[-1]} venv {name}"
        if got == ref:
            first = f"first: {ref[0][2]} {ref[0][4]}" if ref else "no events"
            print(f"EQUAL   {label}: {len(ref)} events, {first}")
            continue
        ok = False
        same_labels = [e[:4] for e in got] == [e[:4] for e in ref]
        print(f"DIFFER  {label}: {len(got)} events vs host {len(ref)}; emotions {'equal' if same_labels else 'differ'}")
        for a, b in zip(ref, got):
            if a != b:
                print(f"        host  {a}\n        guest {b}")
sys.exit(0 if ok else 1)
EOF
}

main() {
    WORKDIR=""
    RELEASE=""
    while (($# > 0)); do
        case $1 in
            -h | --help)
                usage
                exit 0
                ;;
            --workdir)
                (($# >= 2)) || die "--workdir needs a directory"
                WORKDIR=$2
                shift
                ;;
            -*) die "unknown option $1 (see --help)" ;;
            *)
                [[ -z $RELEASE ]] || die "only one RELEASE may be given"
                RELEASE=$1
                ;;
        esac
        shift
    done
    [[ $RELEASE == bookworm || $RELEASE == trixie ]] || die "RELEASE must be bookworm or trixie (see --help)"
    [[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot, mounts): sudo $0 $RELEASE"
    WORKDIR=${WORKDIR:-/var/tmp/deepfer-arm64/$RELEASE}
    mkdir -p "$WORKDIR"
    WORKDIR=$(cd "$WORKDIR" && pwd)
    ROOTFS=$WORKDIR/rootfs
    trap cleanup EXIT
    need_tools
    enable_binfmt
    host_reference "$WORKDIR/dist" "$WORKDIR/out-host"
    build_rootfs
    guest_run "$WORKDIR/dist"
    cp -r "$ROOTFS/root/out-sys" "$ROOTFS/root/out-plain" "$WORKDIR/"
    say "comparing events with the host's"
    if compare "$WORKDIR/out-host" "$WORKDIR/out-sys" "$WORKDIR/out-plain"; then
        say "done: $RELEASE arm64 events equal the host's (outputs in $WORKDIR)"
    else
        say "done: $RELEASE arm64 events DIFFER from the host's (outputs in $WORKDIR)"
        exit 1
    fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
