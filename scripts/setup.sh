#!/usr/bin/env bash
# Everything LXCoNe needs on a fresh Debian 12 machine, run as root; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  gcc libc6-dev python3-venv python3-dev   # the cffi extension and lxcone-monitor are compiled
  musl-tools linux-libc-dev                # lxcone-monitor and lxcone-client: static musl (setup.py)
  busybox-static                           # the embedded demo/test rootfs
  iproute2 iputils-ping util-linux         # test oracles (ip -json, ping, nsenter)
  lxc crun                                 # benchmark peers
  qemu-utils qemu-system-common fuse3      # qcow2 disks: qemu-img, qemu-storage-daemon FUSE export
  e2fsprogs xfsprogs btrfs-progs dosfstools fdisk genisoimage  # grow_disk's tools; test images
  prometheus                               # the exporter tests scrape with a real server
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip setuptools wheel cffi >/dev/null
# --no-build-isolation: the build uses the venv's cffi/setuptools (no second download)
.venv/bin/pip install -q --no-build-isolation -e '.[test]' >/dev/null
echo "setup: ready ($(.venv/bin/python --version), lxcone $(.venv/bin/python -c 'import lxcone; print(lxcone.__version__)'))"
