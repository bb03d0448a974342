#!/usr/bin/env bash
# The Jetson's CPU architecture, checked: install malm's base runtime on linux/aarch64 and answer a query.
#
#   sudo make check-aarch64            # or: sudo scripts/check_aarch64.sh [PYTHON]
#
# Runs an arm64 Debian (bookworm, Python 3.11, the CPython of JetPack 6's Ubuntu 22.04 is 3.10: both have
# aarch64 wheels) under qemu user-mode emulation: debootstrap builds the root once (cached in
# $MALM_AARCH64_ROOT), pip installs the base runtime from PyPI's aarch64 wheels plus malm itself, then
# `malm doctor` and `malm query` run against a small bundle made here (a tiny ONNX image encoder + an
# hnswlib index, built on the host by the test helpers). Needs root (debootstrap, chroot, binfmt_misc), the
# Debian packages qemu-user-static and debootstrap, and network access to deb.debian.org and PyPI.
# Slow (emulated: ~10-20 min the first time, ~2 min after), so it is not part of `make test`.
#
# hnswlib: PyPI has only a source release of hnswlib 0.8.0, so it is compiled in the emulated root (g++ and
# python3-dev are added: slow). MALM_AARCH64_HNSWLIB=chroma-hnswlib installs that fork's aarch64 wheel instead
# (same `hnswlib` module), but it cannot load an index saved by hnswlib 0.8.0 ("Index seems to be corrupted
# or unsupported", seen here), so with it `malm query` fails on a bundle built by malm's hnswlib.
set -euo pipefail

HOST_PY=${1:-${PYTHON:-python3}}
REPO=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${MALM_AARCH64_ROOT:-/var/tmp/malm-aarch64/root}
HNSW=${MALM_AARCH64_HNSWLIB:-hnswlib}
MIRROR=${MALM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=/opt/malm-check

die() { echo "check-aarch64: $*" >&2; exit 1; }
step() { echo "== $*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and binfmt_misc): run it with sudo"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap qemu-user-static"
[ -x /usr/bin/qemu-aarch64-static ] || die "qemu-aarch64-static is missing: apt-get install qemu-user-static"

# 1. Let the kernel hand aarch64 binaries to qemu (a container may lack the binfmt_misc mount).
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    step "registering qemu-aarch64 with binfmt_misc"
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc \
        || die "cannot mount binfmt_misc (a container without privileges?): run this on a host or a privileged container"
    cat /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register \
        || die "cannot register qemu-aarch64 with binfmt_misc"
fi

# 2. An arm64 Debian root with Python, built once.
if [ ! -x "$ROOT/usr/bin/python3" ]; then
    step "debootstrap arm64 bookworm into $ROOT (emulated dpkg: takes a while)"
    mkdir -p "$ROOT"
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$ROOT" "$MIRROR" >&2 || die "debootstrap failed (see above)"
fi
[ "$(chroot "$ROOT" uname -m)" = aarch64 ] || die "the root does not run as aarch64"

# No /proc, /sys or /dev bind mounts: under qemu-user they show the *host's* x86 CPU, and ONNX Runtime's
# cpuinfo library, parsing the host's /sys/devices/system/cpu as an ARM machine, crashes the process
# (SIGSEGV, seen with qemu 7.2). Without them ONNX Runtime warns that it cannot read CPU features and
# runs its generic aarch64 kernels; `malm doctor` reports the features as unknown.
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The host's CA bundle (a network that inspects TLS adds its own CA there): pip in the root trusts the same.
HOST_CA=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
CA=/etc/ssl/certs/ca-certificates.crt
if [ -f "$HOST_CA" ]; then cp "$HOST_CA" "$ROOT/etc/ssl/certs/host-ca-bundle.crt"; CA=/etc/ssl/certs/host-ca-bundle.crt; fi

# 3. malm's tracked files and a small bundle + photos made on the host.
step "copying malm and making a small bundle"
# The venv is kept between runs (installing under emulation is slow); the rest is made fresh.
rm -rf "$ROOT$WORK/src" "$ROOT$WORK/bundle" "$ROOT$WORK/bundle-src" "$ROOT$WORK/photos" && mkdir -p "$ROOT$WORK/src"
git -C "$REPO" ls-files -z --cached --others --exclude-standard | (cd "$REPO" && xargs -0 tar cf - 2>/dev/null) \
    | tar xf - -C "$ROOT$WORK/src"
PYTHONPATH="$REPO:$REPO/tests" "$HOST_PY" - "$ROOT$WORK" <<'EOF'
import sys
from pathlib import Path

from _sdk_bundle import make_bundle, save_photos

out = Path(sys.argv[1])
make_bundle(out / "bundle", 20)
save_photos(out / "photos", range(3, 4))
EOF

# 4. The base runtime from PyPI's aarch64 wheels, then malm (its own dependencies already there).
step "pip install in the aarch64 root: onnxruntime numpy pillow typer rich $HNSW, then malm"
if [ "$HNSW" = hnswlib ] && ! chroot "$ROOT" sh -c 'command -v g++' >/dev/null; then
    chroot "$ROOT" sh -c 'apt-get update -q && apt-get install -y -q g++ python3-dev' >&2 \
        || die "cannot install g++ in the root"
fi
chroot "$ROOT" env -u PIP_FIND_LINKS PIP_CERT=$CA REQUESTS_CA_BUNDLE=$CA SSL_CERT_FILE=$CA sh -ec "
    [ -x $WORK/venv/bin/python ] || python3 -m venv $WORK/venv
    $WORK/venv/bin/pip install -q --disable-pip-version-check --only-binary=onnxruntime,numpy,pillow \
        onnxruntime numpy pillow typer rich $HNSW
    $WORK/venv/bin/pip install -q --disable-pip-version-check --no-deps $WORK/src
" >&2 || die "pip install failed in the aarch64 root (see above)"

# 5. The runtime answers.
step "malm doctor and malm query on aarch64"
chroot "$ROOT" env HOME=/root $WORK/venv/bin/malm doctor --bundle $WORK/bundle --json > "$ROOT$WORK/doctor.json" \
    || die "malm doctor failed on aarch64: $(cat "$ROOT$WORK/doctor.json")"
chroot "$ROOT" env HOME=/root $WORK/venv/bin/malm query $WORK/photos/photo003.jpg --bundle $WORK/bundle -k 3 \
    --json > "$ROOT$WORK/query.json" || die "malm query failed on aarch64"
"$HOST_PY" - "$ROOT$WORK" <<'EOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
doctor, query = json.loads((out / "doctor.json").read_text()), json.loads((out / "query.json").read_text())
top = query["results"][0]["hits"][0]
print(f"aarch64: {doctor['platform']}, Python {doctor['python']}, onnxruntime {doctor['onnxruntime']['version']} "
      f"({', '.join(doctor['onnxruntime']['providers_available'])}), hnswlib {doctor['hnswlib']}, "
      f"CPU features {doctor['cpu']['flags']} ({doctor['cpu']['int8_path']})")
print(f"aarch64: malm query photo003.jpg -> {top['recipe_id']} ({top['title']}), score {top['score']:.3f}")
assert doctor["cpu"]["machine"] == "aarch64", doctor["cpu"]
assert top["recipe_id"] == "rec0003", top
print("check-aarch64: OK")
EOF
