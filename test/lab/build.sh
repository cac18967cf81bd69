#!/usr/bin/env bash
# Build what the real-kernel VFIO lab needs (see docs/lab.md), into a cache OUTSIDE the work tree:
#
#   $CACHE/kernel/vmlinuz, $CACHE/kernel/root/lib/modules/KVER/   trixie's linux-image-6.12 (unsigned), unpacked
#   $CACHE/busybox                                                 trixie's busybox-static
#   $CACHE/initramfs.cpio                                          rebuilt on every run (the project changes)
#   $CACHE/lab.env                                                 KVER, KERNEL, INITRD, QEMU for the test
#
#   $CACHE/iommufd/bzImage                                         (--iommufd) a 6.12 kernel built from trixie's
#                                                                  linux-source-6.12 with IOMMUFD, VFIO cdev and the
#                                                                  mtty mdev sample built in; built ONCE (~10 min on
#                                                                  2 cores, nice 19), then reused
#
#   usage: test/lab/build.sh [--no-tsc] [--iommufd]   (cache: $TSPMD_LAB_CACHE, default /var/cache/tspmd/lab;
#                                                      Debian mirror: $TSPMD_LAB_MIRROR, default http://deb.debian.org/debian)
#
# Without --iommufd a kernel already in the cache is still used (lab.env names it).
# Downloads go through a PRIVATE apt configuration for Debian trixie (the system's apt sources are
# never changed) and are cached: a warm run needs no network. QEMU comes from the system
# (qemu-system-x86, installed with apt-get when missing). --no-tsc skips "tsc -p ." (the caller has
# just built dist/, e.g. npm test). Each step is printed; a failure names its step and exits 1; exit 3
# means the lab cannot be built on this machine (no network to the Debian mirror on a cold cache).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${TSPMD_LAB_CACHE:-/var/cache/tspmd/lab}
mirror=${TSPMD_LAB_MIRROR:-http://deb.debian.org/debian}
tsc=1
iommufd=0
for a in "$@"; do
  case "$a" in
    --no-tsc) tsc=0 ;;
    --iommufd) iommufd=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "lab build: unknown argument $a (see --help)" >&2; exit 2 ;;
  esac
done

step_name=""
step() { step_name=$1; echo "lab build: [$(date +%T)] $1"; }
kstep=0
fail() {
  echo "lab build: FAILED at step \"$step_name\": $*" >&2
  # the test reports a failed IOMMUFD kernel build (instead of skipping its guests as "not built")
  [ $kstep = 1 ] && echo "step \"$step_name\": $*" > "$cache/iommufd.failed"
  step_name=""
  exit 1
}
# the lab cannot be built here (no network to the Debian mirror): exit 3, the test skips and says why
unavailable() { echo "lab build: UNAVAILABLE at step \"$step_name\": $*" >&2; step_name=""; exit 3; }
trap 'rc=$?; [ $rc -ne 0 ] && [ $rc -ne 3 ] && [ -n "$step_name" ] && echo "lab build: FAILED at step \"$step_name\" (exit $rc)" >&2; rm -rf "${stage:-/nonexistent-tsp}"' EXIT

mkdir -p "$cache"
# staging directories of builds that were killed (older than an hour)
find /tmp -maxdepth 1 -name 'tsp-lab-*' -mmin +60 -exec rm -rf {} + 2>/dev/null || true
# One build at a time per cache (two test runs must not write the same initramfs).
exec 9>"$cache/.lock"
flock 9

# ---------------------------------------------------------------------------------------------
step "host tools"
[ "$(id -u)" = 0 ] || fail "must run as root (apt-get download, depmod on the module tree)"
for t in apt-get apt-cache dpkg-deb xz ldd flock; do command -v $t >/dev/null || fail "$t is missing"; done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || fail "$keyring is missing: apt-get install debian-archive-keyring"

step "QEMU (system package qemu-system-x86)"
if ! command -v qemu-system-x86_64 >/dev/null; then
  echo "lab build: qemu-system-x86_64 not found: apt-get install qemu-system-x86"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null 2>&1; } ||
    unavailable "apt-get install qemu-system-x86 failed (no network to the Debian mirror?)"
fi
qemu=$(command -v qemu-system-x86_64)
qdevs=$("$qemu" -device help 2>/dev/null || true)
grep -q '"intel-iommu"' <<< "$qdevs" || fail "$qemu has no intel-iommu device"
echo "lab build:   $("$qemu" --version | head -1)"

# ---------------------------------------------------------------------------------------------
apt_dir="$cache/apt"
opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$apt_dir/sources"
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
      -o "Dir::State::status=/dev/null" -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
apt_ready=0
private_apt() {
  [ $apt_ready = 1 ] && return 0
  echo "lab build:   private apt configuration for Debian trixie: apt-get update"
  mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
  cat > "$apt_dir/sources/trixie.sources" <<SRC
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Signed-By: $keyring
SRC
  apt-get -qq "${opts[@]}" update >&2 || unavailable "apt-get update of the private trixie source failed (no network to $mirror?)"
  # apt-get update only warns when an index cannot be fetched: check that trixie's index is there
  ls "$apt_dir/lists/"*_dists_trixie_main_binary-amd64_Packages* >/dev/null 2>&1 ||
    unavailable "apt-get update could not fetch trixie's package index from $mirror (no network to the mirror?)"
  apt_ready=1
}
# download PKG into $cache/deb (once); prints the .deb path
download() {
  local pkg=$1 deb
  deb=$(ls "$cache/deb/${pkg}"_*.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    private_apt >&2
    mkdir -p "$cache/deb"
    ( cd "$cache/deb" && apt-get -qq "${opts[@]}" download "$pkg" >&2 ) || unavailable "apt-get download $pkg failed (no network to $mirror?)"
    deb=$(ls "$cache/deb/${pkg}"_*.deb | head -1 || true)
  fi
  echo "$deb"
}

# ---------------------------------------------------------------------------------------------
step "guest kernel: trixie linux-image-6.12 unsigned, with its VFIO modules"
if [ ! -f "$cache/kernel/vmlinuz" ] || [ ! -f "$cache/kernel/kver" ]; then
  private_apt
  meta=$(apt-cache "${opts[@]}" depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-6\.12[^ ]*-amd64\)$/\1/p' | head -1 || true)
  [ -n "$meta" ] || fail "cannot find which linux-image-6.12.*-amd64 trixie's linux-image-amd64 depends on"
  pkg="$meta-unsigned"
  deb=$(download "$pkg")
  echo "lab build:   $(basename "$deb")"
  rm -rf "$cache/kernel.tmp"
  mkdir -p "$cache/kernel.tmp/root"
  dpkg-deb -x "$deb" "$cache/kernel.tmp/root" || fail "dpkg-deb -x $deb failed"
  kver=$(ls "$cache/kernel.tmp/root/lib/modules" "$cache/kernel.tmp/root/usr/lib/modules" 2>/dev/null | grep -m1 '^6\.' || true)
  [ -n "$kver" ] || fail "$deb has no lib/modules/KVER"
  vml=$(ls "$cache/kernel.tmp/root/boot/vmlinuz-"* | head -1 || true)
  [ -f "$vml" ] || fail "$deb has no boot/vmlinuz-*"
  cp "$vml" "$cache/kernel.tmp/vmlinuz"
  echo "$kver" > "$cache/kernel.tmp/kver"
  rm -rf "$cache/kernel"
  mv "$cache/kernel.tmp" "$cache/kernel"
  rm -f "$deb" # 100 MB: the unpacked tree is what is kept
fi
kver=$(cat "$cache/kernel/kver")
moddir="$cache/kernel/root/lib/modules/$kver"
[ -d "$moddir" ] || moddir="$cache/kernel/root/usr/lib/modules/$kver"
[ -d "$moddir" ] || fail "module tree for $kver is missing under $cache/kernel/root"
echo "lab build:   kernel $kver"

step "busybox (trixie busybox-static)"
if [ ! -x "$cache/busybox" ]; then
  deb=$(download busybox-static)
  tmp=$(mktemp -d /tmp/tsp-lab-bb-XXXXXX)
  dpkg-deb -x "$deb" "$tmp" || { rm -rf "$tmp"; fail "dpkg-deb -x $deb failed"; }
  bb=$(ls "$tmp/bin/busybox" "$tmp/usr/bin/busybox" 2>/dev/null | head -1 || true)
  [ -n "$bb" ] || { rm -rf "$tmp"; fail "$deb has no busybox binary"; }
  cp "$bb" "$cache/busybox.tmp" && chmod 755 "$cache/busybox.tmp" && mv "$cache/busybox.tmp" "$cache/busybox"
  rm -rf "$tmp"
fi
bbcpio=$("$cache/busybox" cpio --help 2>&1 || true)
grep -q -- 'Create' <<< "$bbcpio" || fail "$cache/busybox cannot create cpio archives"

# ---------------------------------------------------------------------------------------------
# The IOMMUFD kernel: trixie's 6.12 sources, x86_64_defconfig + kvm_guest.config + what the lab
# needs, everything built in (no modules). Built once; the cache key is the source version and the
# option list below.
KOPTS_Y="IOMMUFD VFIO VFIO_GROUP VFIO_CONTAINER VFIO_IOMMU_TYPE1 VFIO_NOIOMMU VFIO_DEVICE_CDEV VFIO_PCI VFIO_PCI_CORE
  INTEL_IOMMU IRQ_REMAP HUGETLBFS DEVTMPFS BLK_DEV_INITRD E1000E IGB VIRTIO_NET VIRTIO_PCI SERIAL_8250 SERIAL_8250_CONSOLE
  SAMPLES SAMPLE_VFIO_MDEV_MTTY VFIO_MDEV"
KOPTS_N="DRM SOUND USB_SUPPORT WLAN WIRELESS DEBUG_INFO MODULE_SIG IOMMUFD_VFIO_CONTAINER"
if [ $iommufd = 1 ] && [ ! -f "$cache/iommufd/bzImage" ]; then
  kstep=1
  step "IOMMUFD kernel: trixie linux-source-6.12"
  for t in make gcc flex bison bc; do
    command -v $t >/dev/null || {
      echo "lab build:   $t is missing: apt-get install build-essential flex bison bc libelf-dev libssl-dev"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends build-essential flex bison bc libelf-dev libssl-dev >/dev/null 2>&1 ||
        unavailable "apt-get install of the kernel build tools failed"
      break
    }
  done
  [ -f /usr/include/gelf.h ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libelf-dev >/dev/null 2>&1 || unavailable "apt-get install libelf-dev failed"
  [ -f /usr/include/openssl/ssl.h ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libssl-dev >/dev/null 2>&1 || unavailable "apt-get install libssl-dev failed"
  deb=$(download linux-source-6.12)
  echo "lab build:   $(basename "$deb")"
  src="$cache/iommufd.src"
  rm -rf "$src" && mkdir -p "$src"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$src" --wildcards './usr/src/linux-source-6.12.tar.xz' || fail "$deb has no usr/src/linux-source-6.12.tar.xz"
  step "IOMMUFD kernel: unpack"
  tar -xJf "$src/usr/src/linux-source-6.12.tar.xz" -C "$src" || fail "cannot unpack linux-source-6.12.tar.xz"
  rm -rf "$src/usr"
  ksrc="$src/linux-source-6.12"
  step "IOMMUFD kernel: configure (x86_64_defconfig + kvm_guest.config + lab options)"
  ( cd "$ksrc" && make -s x86_64_defconfig >/dev/null && make -s kvm_guest.config >/dev/null ) || fail "make x86_64_defconfig kvm_guest.config failed"
  cfgargs=()
  for o in $KOPTS_Y; do cfgargs+=(--enable "$o"); done
  for o in $KOPTS_N; do cfgargs+=(--disable "$o"); done
  ( cd "$ksrc" && scripts/config "${cfgargs[@]}" --enable DEBUG_INFO_NONE --set-str LOCALVERSION -tsplab && make -s olddefconfig >/dev/null ) || fail "make olddefconfig failed"
  for o in $KOPTS_Y; do grep -q "^CONFIG_$o=y" "$ksrc/.config" || fail "CONFIG_$o=y did not stick (Kconfig dependencies?)"; done
  step "IOMMUFD kernel: make bzImage (nice 19, -j$(nproc); about 10 minutes on 2 cores)"
  ( cd "$ksrc" && nice -n 19 make -s -j"$(nproc)" bzImage > "$cache/iommufd.build.log" 2>&1 ) ||
    { tail -30 "$cache/iommufd.build.log" >&2; fail "make bzImage failed (log: $cache/iommufd.build.log)"; }
  mkdir -p "$cache/iommufd.tmp"
  cp "$ksrc/arch/x86/boot/bzImage" "$cache/iommufd.tmp/bzImage"
  cp "$ksrc/.config" "$cache/iommufd.tmp/config"
  ( cd "$ksrc" && make -s kernelrelease ) > "$cache/iommufd.tmp/kver"
  rm -rf "$cache/iommufd" && mv "$cache/iommufd.tmp" "$cache/iommufd"
  rm -rf "$src" "$deb" "$cache/iommufd.failed"
  kstep=0
fi

# ---------------------------------------------------------------------------------------------
if [ $tsc = 1 ]; then
  step "project: tsc -p . (dist/)"
  ( cd "$root" && npx tsc -p . ) || fail "tsc -p . failed: the project does not compile"
fi
step "project: dist/ and runtime node_modules"
[ -f "$root/dist/app/tspmd.js" ] || fail "$root/dist/app/tspmd.js is missing: run npx tsc -p . (or drop --no-tsc)"
[ -f "$root/dist/test/lab/guest.js" ] || fail "$root/dist/test/lab/guest.js is missing: run npx tsc -p ."
runtime_mods=$(cd "$root" && npm ls --omit=dev --parseable --all 2>/dev/null | grep '/node_modules/' || true)
grep -q '/node_modules/koffi$' <<< "$runtime_mods" || fail "koffi is not in $root/node_modules: run npm ci"

# ---------------------------------------------------------------------------------------------
step "initramfs: busybox, VFIO modules, node and its libraries, the project"
stage=$(mktemp -d /tmp/tsp-lab-stage-XXXXXX)
mkdir -p "$stage"/{bin,sbin,proc,sys,dev,tmp,run,mnt,etc,root,hugepages}
cp "$cache/busybox" "$stage/bin/busybox"
ln -s busybox "$stage/bin/sh"
cp "$root/test/lab/init.sh" "$stage/init"
chmod 755 "$stage/init"

# Modules: the VFIO set and whatever they depend on (the modules' depends= info), decompressed so that busybox's
# insmod can load them; then depmod -b on the small tree.
declare -A want=()
need_mod() {
  local m=$1 f dep
  m=${m//-/_}
  [ -n "${want[$m]:-}" ] && return 0
  f=$(find "$moddir/kernel" -name "$m.ko*" -o -name "${m//_/-}.ko*" | head -1 || true)
  [ -n "$f" ] || fail "module $m is not in $moddir (the kernel lacks it)"
  want[$m]=$f
  local tmpko
  tmpko=$(mktemp /tmp/tsp-lab-ko-XXXXXX)
  case "$f" in
    *.xz) xz -dc "$f" > "$tmpko" ;;
    *.zst) zstd -qdc "$f" > "$tmpko" ;;
    *) cp "$f" "$tmpko" ;;
  esac
  local rel=${f#"$moddir/"}; rel=${rel%.xz}; rel=${rel%.zst}
  mkdir -p "$stage/lib/modules/$kver/$(dirname "$rel")"
  mv "$tmpko" "$stage/lib/modules/$kver/$rel"
  for dep in $("$cache/busybox" strings "$stage/lib/modules/$kver/$rel" | sed -n 's/^depends=//p' | tr ',' ' '); do need_mod "$dep"; done
}
for m in vfio vfio_iommu_type1 irqbypass vfio_pci_core vfio_pci; do need_mod $m; done
# the igb guest's kernel-owned NICs (e1000e) and the peer side of net_af_packet
need_mod e1000e
cp "$moddir"/modules.order "$moddir"/modules.builtin* "$stage/lib/modules/$kver/" 2>/dev/null || true
"$cache/busybox" depmod -b "$stage" "$kver" || fail "depmod -b failed"
echo "lab build:   modules: ${!want[*]}"

# Node and the libraries ldd names, at their paths.
node=$(readlink -f "$(command -v node)")
[ -x "$node" ] || fail "node is not found on the host"
mkdir -p "$stage/usr/bin"
cp "$node" "$stage/usr/bin/node"
for lib in $(ldd "$node" | grep -oE '(/[^ ]+)' ); do
  [ -f "$lib" ] || continue
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done
# the dynamic linker as the ELF interpreter names it
interp=$("$cache/busybox" strings "$node" | grep -m1 '^/lib.*ld-linux' || true)
[ -n "$interp" ] && [ ! -e "$stage$interp" ] && { mkdir -p "$stage$(dirname "$interp")"; cp -L "$interp" "$stage$interp"; }
# koffi's and @napi-rs's native parts need only libc, libstdc++, libgcc_s: node's set covers them.
# iproute2 (ip netns) and ethtool for the igb guest's namespaces and offload settings, with their libraries
# (busybox's ip has no netns).
for tool in ip ethtool; do
  bin=$(readlink -f "$(command -v $tool || true)")
  [ -x "$bin" ] || fail "$tool is missing on the host: apt-get install iproute2 ethtool"
  cp "$bin" "$stage/usr/bin/$tool-host"
  for lib in $(ldd "$bin" | grep -oE '(/[^ ]+)'); do
    [ -f "$lib" ] || continue
    [ -e "$stage$lib" ] && continue
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$lib" "$stage$lib"
  done
done

# The project: package.json, dist/, runtime node_modules.
mkdir -p "$stage/tspmd/node_modules"
cp "$root/package.json" "$stage/tspmd/"
cp -a "$root/dist" "$stage/tspmd/dist"
while IFS= read -r d; do
  [ -n "$d" ] || continue
  rel=${d#"$root/"}
  mkdir -p "$stage/tspmd/$(dirname "$rel")"
  cp -a "$d" "$stage/tspmd/$rel"
done <<< "$runtime_mods"

( cd "$stage" && find . -mindepth 1 | "$cache/busybox" cpio -o -H newc > "$cache/initramfs.cpio.tmp" 2>/dev/null ) || fail "cpio failed"
mv "$cache/initramfs.cpio.tmp" "$cache/initramfs.cpio"
echo "lab build:   $cache/initramfs.cpio: $(( $(stat -c %s "$cache/initramfs.cpio") / 1048576 )) MB"

cat > "$cache/lab.env.tmp" <<ENV
KVER=$kver
KERNEL=$cache/kernel/vmlinuz
INITRD=$cache/initramfs.cpio
QEMU=$qemu
ENV
if [ -f "$cache/iommufd/bzImage" ]; then
  echo "KERNEL_IOMMUFD=$cache/iommufd/bzImage" >> "$cache/lab.env.tmp"
  echo "KVER_IOMMUFD=$(cat "$cache/iommufd/kver")" >> "$cache/lab.env.tmp"
fi
mv "$cache/lab.env.tmp" "$cache/lab.env"
step "done"
step_name=""
