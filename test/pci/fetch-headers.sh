#!/usr/bin/env bash
# Fetch Debian trixie's linux-libc-dev (kernel UAPI headers with linux/iommufd.h and
# VFIO_DEVICE_BIND_IOMMUFD) through a PRIVATE apt configuration and unpack it, without installing
# it and without touching the system's apt sources. Idempotent: does nothing when the headers are
# already unpacked. Prints the include directory on success.
#
#   usage: test/pci/fetch-headers.sh [CACHE_DIR]      (default /var/cache/tspmd/linux-libc-dev-trixie)
#
# test/pci/uapi.test.ts compiles a C program with -I CACHE_DIR/usr/include first.
set -euo pipefail

cache=${1:-${TSPMD_UAPI_CACHE:-/var/cache/tspmd/linux-libc-dev-trixie}}
inc="$cache/usr/include"
if [ -f "$inc/linux/iommufd.h" ] && [ -f "$inc/linux/vfio.h" ]; then
  echo "$inc"
  exit 0
fi

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || { echo "fetch-headers: $keyring is missing: apt-get install debian-archive-keyring" >&2; exit 1; }
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || { echo "fetch-headers: apt-get and dpkg-deb are needed" >&2; exit 1; }

apt_dir="$cache.apt"
mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/deb"
cat > "$apt_dir/sources/trixie.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: $keyring
SRC
opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$apt_dir/sources"
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
      -o "Dir::State::status=/dev/null" -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
apt-get -qq "${opts[@]}" update >&2 || { echo "fetch-headers: apt-get update of the private trixie source failed (network?)" >&2; exit 1; }
( cd "$apt_dir/deb" && rm -f linux-libc-dev_*.deb && apt-get -qq "${opts[@]}" download linux-libc-dev/trixie >&2 ) ||
  { echo "fetch-headers: apt-get download linux-libc-dev/trixie failed" >&2; exit 1; }
deb=$(ls "$apt_dir"/deb/linux-libc-dev_*.deb | head -1)
tmp=$(mktemp -d "$cache.tmp-XXXXXX")
dpkg-deb -x "$deb" "$tmp"
[ -f "$tmp/usr/include/linux/iommufd.h" ] || { rm -rf "$tmp"; echo "fetch-headers: $deb has no linux/iommufd.h" >&2; exit 1; }
# x86_64 asm headers live under the multiarch dir; the test adds it to the include path too.
rm -rf "$cache"
mv "$tmp" "$cache"
rm -rf "$apt_dir" # package lists and the .deb are not needed once unpacked
echo "fetch-headers: unpacked $(basename "$deb") into $cache" >&2
echo "$inc"
