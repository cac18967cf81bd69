#!/bin/sh
# PID 1 of the lab guest (busybox sh; test/lab/build.sh puts it at /init in the initramfs).
# Kernel command line parameters: tsplab.bdf=DDDD:BB:DD.F (default 0000:00:03.0), tsplab.mode=group|iommufd|noiommu
# (noiommu: no emulated IOMMU and vfio.enable_unsafe_noiommu_mode=1; the NIC's group is /dev/vfio/noiommu-N).
# With a mdev parent (the mtty sample built into the lab's IOMMUFD kernel) an mdev is created too, except
# in noiommu mode (an mdev's group is not a no-IOMMU group: the two cannot share one container).
# Every result is one line "TSPLAB {json}" on the console (ttyS0); the last one is check "done".
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /dev/hugepages
mount -t hugetlbfs nodev /dev/hugepages
echo 64 > /proc/sys/vm/nr_hugepages

param() { sed -n "s/.*tsplab\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
bdf=$(param bdf); [ -n "$bdf" ] || bdf=0000:00:03.0
mode=$(param mode); [ -n "$mode" ] || mode=group
# res CHECK true|false DETAIL (DETAIL: no quotes or backslashes)
res() { echo "TSPLAB {\"check\":\"$1\",\"mode\":\"$mode\",\"ok\":$2,\"detail\":\"$(echo "$3" | tr -d '"\\' | tr '\n' ' ')\"}"; }
finish() {
  echo "---- guest kernel log (tail) ----"
  dmesg | tail -n 40
  echo "---- end of guest kernel log ----"
  res done true "$1"
  sync
  poweroff -f
  sleep 5
}

# VFIO modules, in dependency order (the lab's IOMMUFD kernel has VFIO built in: no modules)
kver=$(uname -r)
if [ -d /lib/modules/$kver ]; then
  for m in vfio vfio_iommu_type1 irqbypass vfio-pci-core vfio-pci; do
    name=$(echo $m | tr - _)
    if [ ! -d /sys/module/$name ]; then
      out=$(modprobe $m 2>&1) || { res modules false "modprobe $m failed ($kver): $out"; finish "modules"; }
    fi
  done
  how="vfio vfio_iommu_type1 irqbypass vfio_pci_core vfio_pci loaded"
else
  how="no modules for $kver: VFIO built in"
fi
if [ -d /sys/bus/pci/drivers/vfio-pci ] && [ -c /dev/vfio/vfio ]; then
  res modules true "$how ($kver)$([ -c /dev/iommu ] && echo ', /dev/iommu present')"
else
  res modules false "$how ($kver) but /sys/bus/pci/drivers/vfio-pci or /dev/vfio/vfio is missing"
  finish modules
fi

# bind the NIC to vfio-pci
d=/sys/bus/pci/devices/$bdf
[ -d $d ] || { res bind false "no PCI device $bdf: $(ls /sys/bus/pci/devices | tr '\n' ' ')"; finish bind; }
# without an IOMMU the device gets its (no-IOMMU) group only when vfio-pci binds it
[ "$mode" = noiommu ] || [ -L $d/iommu_group ] || { res bind false "$bdf has no iommu_group (is the IOMMU on: intel_iommu=on?)"; finish bind; }
[ -L $d/driver ] && echo $bdf > $d/driver/unbind
echo vfio-pci > $d/driver_override
echo $bdf > /sys/bus/pci/drivers_probe
drv=$(basename "$(readlink $d/driver)")
grp=$(basename "$(readlink $d/iommu_group)")
gnode=/dev/vfio/$grp; [ "$mode" = noiommu ] && gnode=/dev/vfio/noiommu-$grp
if [ "$drv" = vfio-pci ] && [ -n "$grp" ] && [ -c $gnode ] && [ -c /dev/vfio/vfio ]; then
  # sysfs always has vfio-dev/vfioN; the /dev node exists only with CONFIG_VFIO_DEVICE_CDEV
  cdev=$(ls $d/vfio-dev 2>/dev/null | head -n 1)
  res bind true "$bdf $(cat $d/vendor):$(cat $d/device) on vfio-pci, IOMMU group $grp, $gnode$([ -n "$cdev" ] && [ -c /dev/vfio/devices/$cdev ] && echo ", cdev /dev/vfio/devices/$cdev")"
else
  res bind false "$bdf driver=$drv group=$grp; /dev/vfio: $(ls /dev/vfio 2>&1 | tr '\n' ' ')"
  finish bind
fi

# a mediated device when the kernel has a parent (the mtty sample): write a UUID into a type's create
mdevargs=""
parent=$(ls /sys/class/mdev_bus 2>/dev/null | head -n 1)
if [ -n "$parent" ] && [ "$mode" != noiommu ]; then
  types=/sys/class/mdev_bus/$parent/mdev_supported_types
  type=$(ls $types | grep -- '-2$' | head -n 1); [ -n "$type" ] || type=$(ls $types | head -n 1)
  uuid=83b8f4f2-509f-382f-3c1e-e6bfe0fa1001
  if echo $uuid > $types/$type/create && [ -e /sys/bus/mdev/devices/$uuid ]; then
    res mdev-create true "$type ($(cat $types/$type/name 2>/dev/null), device_api $(cat $types/$type/device_api)) of $parent: /sys/bus/mdev/devices/$uuid, IOMMU group $(basename "$(readlink /sys/bus/mdev/devices/$uuid/iommu_group)")"
    mdevargs="--mdev $uuid"
  else
    res mdev-create false "echo $uuid > $types/$type/create failed"
  fi
fi

# the project's own code, unchanged
cd /tspmd
if [ "$(param prog)" = igb ]; then
  # the igb guest: its NIC on vfio-pci, three e1000e owned by the kernel (namespaces, af_packet peer)
  [ -d /lib/modules/$kver ] && { modprobe e1000e 2>&1 || res modules false "modprobe e1000e failed"; }
  node dist/test/lab/igb-guest.js --bdf $bdf --mode $mode
else
  node dist/test/lab/guest.js --bdf $bdf --mode $mode $mdevargs
fi
rc=$?
res node $([ $rc = 0 ] && echo true || echo false) "node dist/test/lab/guest.js exited with $rc"
finish "all"
