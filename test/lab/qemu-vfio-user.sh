#!/usr/bin/env bash
# Fetch QEMU 11.1 from Debian trixie-backports (it has the vfio-user client, device vfio-user-pci) and
# unpack it, with every library it needs, into ONE private tree (cached, outside the work tree):
#
#   $CACHE/qemu-11/tree/             dpkg-deb -x of every package QEMU 11.1 needs on an EMPTY status database
#   $CACHE/qemu-11/qemu.env          QEMU11_TREE, QEMU11_VERSION for test/lab/vfio-user-interop.test.ts
#   $CACHE/qemu-11/debs/             the downloaded .debs (kept: a warm run needs no network)
#   $CACHE/qemu-11/initramfs-pci.cpio a 1 MB guest initramfs: busybox + an init that prints every PCI device
#                                    as "TSPLAB {json}" and powers off (rebuilt on every run; needs the lab's
#                                    busybox and kernel: test/lab/build.sh is run first when they are missing)
#   $CACHE/qemu-11/initramfs-net.cpio the same busybox + the kernel's virtio_net module (and failover,
#                                    net_failover); its init binds Linux's virtio_net to the virtio-net NIC
#                                    with MAC tsp.mac=, brings it up as tsp.ip= and pings tsp.peer=
#                                    (kernel command line), reporting each step as "TSPLAB {json}";
#                                    with tsp.tcp=MIB also TCP both ways: it fetches
#                                    http://PEER:8080/blob (tcp-in: bytes, secs, sha256), then
#                                    serves MIB random MiB on :8080/blob (tcp-serve: sha256) and
#                                    waits up to 90 s for the host's line on :8081 (tcp-out)
#
#   usage: test/lab/qemu-vfio-user.sh   (cache: $TSPMD_LAB_CACHE, default /var/cache/tspmd/lab;
#                                        Debian mirror: $TSPMD_LAB_MIRROR, default http://deb.debian.org/debian)
#
# The host's QEMU and apt sources are never touched: resolution and downloads go through a PRIVATE apt
# configuration (trixie + trixie-backports, status database /dev/null). QEMU runs through the tree's own
# ld-linux (see docs/lab.md and VFIO-LAB.md "vfio-user and QEMU"); the symlink
# usr/lib/x86_64-linux-gnu/qemu-bundle -> ../../.. makes it load its modules from the tree, not the host's.
# Each step is printed; a failure exits 1; exit 3 means the mirror is unreachable on a cold cache.
set -euo pipefail

cache=${TSPMD_LAB_CACHE:-/var/cache/tspmd/lab}
mirror=${TSPMD_LAB_MIRROR:-http://deb.debian.org/debian}
dir="$cache/qemu-11"
tree="$dir/tree"
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;; esac

step_name=""
step() { step_name=$1; echo "qemu-11: [$(date +%T)] $1"; }
fail() { echo "qemu-11: FAILED at step \"$step_name\": $*" >&2; exit 1; }
unavailable() { echo "qemu-11: UNAVAILABLE at step \"$step_name\": $*" >&2; exit 3; }

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9

qemu_ok() {
  [ -f "$dir/qemu.env" ] && [ -x "$tree/usr/bin/qemu-system-x86_64" ] && [ -L "$tree/usr/lib/x86_64-linux-gnu/qemu-bundle" ]
}
# the guest's initramfs (busybox + a PCI-listing init); the kernel is the lab's trixie 6.12
pci_initramfs() {
  step "guest: the lab's trixie kernel and busybox"
  if [ ! -f "$cache/kernel/vmlinuz" ] || [ ! -x "$cache/busybox" ]; then
    echo "qemu-11:   not in $cache: running test/lab/build.sh --no-tsc"
    local rc=0
    bash "$(dirname "${BASH_SOURCE[0]}")/build.sh" --no-tsc || rc=$?
    [ $rc = 3 ] && unavailable "test/lab/build.sh cannot fetch the kernel/busybox (exit 3)"
    [ $rc = 0 ] || fail "test/lab/build.sh failed with exit $rc"
  fi
  step "guest: initramfs-pci.cpio"
  local st
  st=$(mktemp -d /tmp/tsp-q11-stage-XXXXXX)
  mkdir -p "$st"/{bin,proc,sys,dev}
  cp "$cache/busybox" "$st/bin/busybox"
  ln -s busybox "$st/bin/sh"
  cat > "$st/init" <<'INIT'
#!/bin/sh
# PID 1: print every PCI device the kernel enumerated (TSPLAB lines on ttyS0), then power off
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
n=0
for d in /sys/bus/pci/devices/*; do
  [ -e "$d/vendor" ] || continue
  n=$((n + 1))
  drv=$([ -L $d/driver ] && basename "$(readlink $d/driver)")
  cfg=$(hexdump -v -n 64 -e '16/1 "%02x" " "' $d/config 2>/dev/null)
  bars=$(head -n 6 $d/resource | awk '$1 != "0x0000000000000000" { printf "%s-%s ", $1, $2 }')
  echo "TSPLAB {\"check\":\"pci\",\"ok\":true,\"bdf\":\"$(basename $d)\",\"vendor\":\"$(cat $d/vendor)\",\"device\":\"$(cat $d/device)\",\"class\":\"$(cat $d/class)\",\"driver\":\"$drv\",\"bars\":\"$bars\",\"config64\":\"$cfg\"}"
done
echo "TSPLAB {\"check\":\"done\",\"ok\":true,\"devices\":$n,\"kernel\":\"$(uname -r)\"}"
poweroff -f
sleep 5
INIT
  chmod 755 "$st/init"
  ( cd "$st" && find . -mindepth 1 | "$cache/busybox" cpio -o -H newc > "$dir/initramfs-pci.cpio.tmp" 2>/dev/null ) || { rm -rf "$st"; fail "cpio failed"; }
  rm -rf "$st"
  mv "$dir/initramfs-pci.cpio.tmp" "$dir/initramfs-pci.cpio"
  grep -q '^KERNEL=' "$dir/qemu.env" || {
    echo "KERNEL=$cache/kernel/vmlinuz" >> "$dir/qemu.env"
    echo "INITRD=$dir/initramfs-pci.cpio" >> "$dir/qemu.env"
  }
}

net_initramfs() {
  step "guest: initramfs-net.cpio (virtio_net from the lab kernel's modules)"
  local st mods
  mods=$(find "$cache/kernel/root" -path '*/kernel/drivers/net/virtio_net.ko*' -printf '%h\n' | head -1)
  [ -n "$mods" ] || fail "virtio_net.ko is not among the lab kernel's modules in $cache/kernel/root"
  st=$(mktemp -d /tmp/tsp-q11-stage-XXXXXX)
  mkdir -p "$st"/{bin,proc,sys,dev,lib}
  cp "$cache/busybox" "$st/bin/busybox"
  ln -s busybox "$st/bin/sh"
  for m in net/core/failover drivers/net/net_failover drivers/net/virtio_net; do
    f=$(ls "$mods"/../../"$m".ko* 2>/dev/null | head -1)
    [ -n "$f" ] || { rm -rf "$st"; fail "module $m is missing"; }
    case "$f" in *.xz) xz -dc "$f" > "$st/lib/$(basename "$m").ko" ;; *.zst) zstd -qdc "$f" > "$st/lib/$(basename "$m").ko" ;; *) cp "$f" "$st/lib/" ;; esac
  done
  cat > "$st/init" <<'INIT'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
report() { echo "TSPLAB {\"check\":\"$1\",\"ok\":$2$3}"; }
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk "BEGIN { print $(now) - $1 }"; }
mac=$(arg tsp.mac); ip=$(arg tsp.ip); peer=$(arg tsp.peer); mib=$(arg tsp.tcp)
for m in failover net_failover virtio_net; do
  if out=$(insmod /lib/$m.ko 2>&1); then report insmod true ",\"module\":\"$m\""; else report insmod false ",\"module\":\"$m\",\"error\":\"$out\""; fi
done
sleep 1
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x1af4 ] || continue
  drv=$([ -L $d/driver ] && basename "$(readlink $d/driver)")
  report pci true ",\"bdf\":\"$(basename $d)\",\"device\":\"$(cat $d/device)\",\"driver\":\"$drv\""
done
ifc=""
for i in /sys/class/net/*; do [ "$(cat $i/address)" = "$mac" ] && ifc=$(basename $i); done
if [ -n "$ifc" ]; then
  report iface true ",\"iface\":\"$ifc\",\"mac\":\"$mac\",\"driver\":\"$(basename "$(readlink /sys/class/net/$ifc/device/driver)")\""
  ip link set "$ifc" up && ip addr add "$ip" dev "$ifc"
  sleep 1
  report link true ",\"operstate\":\"$(cat /sys/class/net/$ifc/operstate)\",\"carrier\":\"$(cat /sys/class/net/$ifc/carrier 2>/dev/null)\""
  out=$(ping -c 5 -W 3 "$peer" 2>&1 | tr '\n"' '; ')
  rx=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
  [ "${rx:-0}" -gt 0 ] && ok=true || ok=false
  report ping $ok ",\"peer\":\"$peer\",\"received\":${rx:-0},\"output\":\"$out\""
  if [ -n "$mib" ]; then
    # TCP in: the host's blob from its httpd on tsp.peer:8080; SHA-256 and time reported
    mkdir -p /tmp /srv && mount -t devtmpfs devtmpfs /dev
    t0=$(now)
    wget -q -T 30 -O /tmp/in "http://$peer:8080/blob" 2>/tmp/err && ok=true || ok=false
    report tcp-in $ok ",\"bytes\":$(stat -c %s /tmp/in 2>/dev/null || echo 0),\"secs\":$(since $t0),\"sha256\":\"$(sha256sum /tmp/in | cut -d' ' -f1)\",\"error\":\"$(tr '\n"' '; ' </tmp/err)\""
    rm -f /tmp/in
    # TCP out: tsp.tcp MiB of random bytes served by httpd on :8080; the host fetches them, then
    # sends its SHA-256 to :8081 (or 90 s pass)
    dd if=/dev/urandom of=/srv/blob bs=1048576 count="$mib" 2>/dev/null
    timeout 90 nc -l -p 8081 </dev/null >/tmp/host & w=$!
    httpd -p 8080 -h /srv && ok=true || ok=false
    report tcp-serve $ok ",\"port\":8080,\"path\":\"/blob\",\"bytes\":$(stat -c %s /srv/blob),\"sha256\":\"$(sha256sum /srv/blob | cut -d' ' -f1)\""
    t0=$(now)
    wait $w && ok=true || ok=false
    report tcp-out $ok ",\"secs\":$(since $t0),\"host\":\"$(head -c 200 /tmp/host | tr -d '\n"')\""
  fi
  report stats true ",\"rx_packets\":$(cat /sys/class/net/$ifc/statistics/rx_packets),\"tx_packets\":$(cat /sys/class/net/$ifc/statistics/tx_packets)"
else
  report iface false ",\"mac\":\"$mac\",\"ifaces\":\"$(ls /sys/class/net | tr '\n' ' ')\""
fi
report done true ",\"kernel\":\"$(uname -r)\""
poweroff -f
sleep 5
INIT
  chmod 755 "$st/init"
  ( cd "$st" && find . -mindepth 1 | "$cache/busybox" cpio -o -H newc > "$dir/initramfs-net.cpio.tmp" 2>/dev/null ) || { rm -rf "$st"; fail "cpio failed"; }
  rm -rf "$st"
  mv "$dir/initramfs-net.cpio.tmp" "$dir/initramfs-net.cpio"
  grep -q '^INITRD_NET=' "$dir/qemu.env" || echo "INITRD_NET=$dir/initramfs-net.cpio" >> "$dir/qemu.env"
}

if qemu_ok; then
  step "cached: $dir ($(sed -n 's/^QEMU11_VERSION=//p' "$dir/qemu.env"))"
  pci_initramfs
  net_initramfs
  step "done"
  step_name=""
  exit 0
fi

step "host tools"
for t in apt-get dpkg-deb flock; do command -v $t >/dev/null || fail "$t is missing"; done
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || fail "$keyring is missing: apt-get install debian-archive-keyring"

apt_dir="$dir/apt"
opts=(-o "Dir::Etc::sourcelist=/dev/null" -o "Dir::Etc::sourceparts=$apt_dir/sources"
      -o "Dir::Etc::preferences=/dev/null" -o "Dir::Etc::preferencesparts=$apt_dir/prefs"
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
      -o "Dir::State::status=/dev/null" -o "APT::Get::List-Cleanup=0" -o "Debug::NoLocking=1"
      -o "APT::Sandbox::User=root" -o "APT::Install-Recommends=0")

step "private apt configuration: trixie + trixie-backports, apt-get update"
mkdir -p "$apt_dir/sources" "$apt_dir/prefs" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$dir/debs"
cat > "$apt_dir/sources/trixie.sources" <<SRC
Types: deb
URIs: $mirror
Suites: trixie trixie-backports
Components: main
Signed-By: $keyring
SRC
apt-get -qq "${opts[@]}" update >&2 || unavailable "apt-get update failed (no network to $mirror?)"
ls "$apt_dir/lists/"*_dists_trixie-backports_main_binary-amd64_Packages* >/dev/null 2>&1 ||
  unavailable "could not fetch trixie-backports' package index from $mirror"

step "resolve qemu-system-x86 (trixie-backports) on an empty status database"
sim=$(apt-get "${opts[@]}" -s install -t trixie-backports qemu-system-x86 qemu-system-common qemu-system-data 2>&1) ||
  fail "apt-get -s install failed: $(tail -5 <<< "$sim")"
mapfile -t pkgs < <(sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1=\2/p' <<< "$sim")
[ ${#pkgs[@]} -gt 10 ] || fail "resolution gave only ${#pkgs[@]} packages"
qver=$(printf '%s\n' "${pkgs[@]}" | sed -n 's/^qemu-system-x86=//p')
case "$qver" in 1:11.*|11.*) ;; *) fail "trixie-backports' qemu-system-x86 is $qver, not 11.x" ;; esac
echo "qemu-11:   ${#pkgs[@]} packages, qemu-system-x86 $qver"

step "download ${#pkgs[@]} packages into $dir/debs"
( cd "$dir/debs" && apt-get -qq "${opts[@]}" download "${pkgs[@]}" >&2 ) || unavailable "apt-get download failed (no network to $mirror?)"
echo "qemu-11:   $(du -sh "$dir/debs" | cut -f1)"

step "unpack into $tree"
rm -rf "$tree.tmp" && mkdir -p "$tree.tmp"
for deb in "$dir/debs"/*.deb; do dpkg-deb -x "$deb" "$tree.tmp" || fail "dpkg-deb -x $deb failed"; done
[ -x "$tree.tmp/usr/bin/qemu-system-x86_64" ] || fail "no usr/bin/qemu-system-x86_64 in the tree"
[ -e "$tree.tmp/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] || fail "no ld-linux-x86-64.so.2 in the tree"
ln -sfn ../../.. "$tree.tmp/usr/lib/x86_64-linux-gnu/qemu-bundle"
rm -rf "$tree" && mv "$tree.tmp" "$tree"

step "check: QEMU runs and has vfio-user-pci"
lib="$tree/usr/lib/x86_64-linux-gnu"
run=("$lib/ld-linux-x86-64.so.2" --library-path "$lib" --argv0 qemu-system-x86_64 "$tree/usr/bin/qemu-system-x86_64")
ver=$("${run[@]}" --version | head -1) || fail "$tree/usr/bin/qemu-system-x86_64 --version failed"
echo "qemu-11:   $ver"
"${run[@]}" -device help 2>/dev/null | grep -q '"vfio-user-pci"' || fail "QEMU has no vfio-user-pci device"
cat > "$dir/qemu.env.tmp" <<ENV
QEMU11_TREE=$tree
QEMU11_VERSION=$ver
ENV
mv "$dir/qemu.env.tmp" "$dir/qemu.env"
rm -rf "$apt_dir/lists" # 60+ MB of indexes; the .debs are what a warm run needs
pci_initramfs
net_initramfs
step "done"
step_name=""
