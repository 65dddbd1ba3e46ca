#!/bin/bash
# Build runvm's guest: its own kernel (guest/kernel.sh: Debian's linux-source
# at a pinned version, runvm's config, no modules), Debian's cloud kernel from
# bookworm-backports as the fallback (downloaded and unpacked, never installed
# as the host's kernel), and an initramfs whose /init is runvm-agent plus the
# shared libraries it links and the fallback kernel's few modules.
#
# usage: guest/build.sh AGENT_BINARY OUT_DIR
# Leaves OUT_DIR/vmlinux (runvm's kernel), OUT_DIR/vmlinux-debian (the
# fallback; both uncompressed, booted through their PVH entry point),
# OUT_DIR/initramfs.img (for either) and OUT_DIR/guest.txt. A file whose
# content has not changed is left as it is (templates are stamped by mtime).
set -euo pipefail

agent=${1:?usage: build.sh AGENT_BINARY OUT_DIR}
out=${2:?usage: build.sh AGENT_BINARY OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
cache=${GUEST_CACHE:-$here/../target/guest-cache}
suite=bookworm-backports
meta=linux-image-cloud-amd64

mkdir -p "$cache" "$out"
cache=$(cd "$cache" && pwd)
export GUEST_CACHE=$cache

# Move FILE.tmp over FILE unless they are the same.
settle() {
    if cmp -s "$1.tmp" "$1"; then rm -f "$1.tmp"; else mv "$1.tmp" "$1"; fi
}

# --- runvm's kernel ---------------------------------------------------------------
release=$("$here/kernel.sh" "$out/vmlinux" | tail -n1)

# --- the fallback: Debian's cloud kernel ------------------------------------------
# The metapackage names the current kernel package of the suite.
pkg=$(apt-cache depends -t "$suite" "$meta" 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$pkg" ]; then
    echo "guest: cannot resolve $meta in $suite; is $suite in apt's sources? (make deps)" >&2
    exit 1
fi
deb=$(ls "$cache"/"${pkg}"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
    (cd "$cache" && apt-get download -t "$suite" "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    deb=$(ls "$cache"/"${pkg}"_*.deb 2>/dev/null | head -n1 || true)
    [ -n "$deb" ] || { echo "guest: apt-get download $pkg failed" >&2; exit 1; }
fi
agent_sha=$(cat "$agent" "$0" | sha256sum | cut -d' ' -f1)
kernel_sha=$(sha256sum "$out/vmlinux" | cut -d' ' -f1)
if [ -f "$out/vmlinux-debian" ] && [ -f "$out/initramfs.img" ] && [ -f "$out/guest.txt" ] &&
    grep -qx "agent_sha256=$agent_sha" "$out/guest.txt" &&
    grep -qx "kernel_sha256=$kernel_sha" "$out/guest.txt" &&
    grep -qx "debian_kernel_deb=$(basename "$deb")" "$out/guest.txt"; then
    echo "guest: $out is up to date"
    exit 0
fi

kdir=$cache/kernel
rm -rf "$kdir"
dpkg-deb -x "$deb" "$kdir"
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -n1)
krel=${vmlinuz##*/vmlinuz-}
"$here/extract-vmlinux.py" "$vmlinuz" "$out/vmlinux-debian.tmp"
settle "$out/vmlinux-debian"

# --- initramfs ----------------------------------------------------------------
stage=$cache/initramfs
rm -rf "$stage"
mkdir -p "$stage"/{dev,proc,sys,run,tmp,newroot,etc}
install -m 0755 "$agent" "$stage/init"
# The agent is a glibc program: carry the loader and every library it links.
ldd "$agent" | awk '/=>/ {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
    [ -n "$lib" ] && [ -e "$lib" ] && cp --parents -L "$lib" "$stage/"
done
# The fallback kernel's modules the agent loads at start when that kernel
# runs (uncompressed: finit_module; under /lib/modules/<release>, so runvm's
# kernel, which has them built in, finds none), in the order of their names:
# a module after those it depends on. virtio_balloon reports freed guest
# pages, so the host can drop them; virtio_net (which needs net_failover,
# which needs failover) is the NICs'; virtio_blk is the disk of shared_fs =
# "none" (ext4 is built in).
mkdir -p "$stage/lib/modules/$krel"
n=10
for mod in drivers/virtio/virtio_balloon net/core/failover drivers/net/net_failover \
    drivers/net/virtio_net drivers/block/virtio_blk; do
    src=$(ls "$kdir"/lib/modules/"$krel"/kernel/"$mod".ko* | head -n1)
    dst="$stage/lib/modules/$krel/$n-$(basename "$mod").ko"
    n=$((n + 1))
    case "$src" in
        *.xz) xz -dc "$src" > "$dst" ;;
        *.zst) zstd -dcq "$src" > "$dst" ;;
        *) cp "$src" "$dst" ;;
    esac
done
# The kernel opens /dev/console for PID 1's stdio before /dev is mounted.
if [ "$(id -u)" = 0 ]; then
    mknod -m 600 "$stage/dev/console" c 5 1
else
    echo "guest: not root, the initramfs has no /dev/console (no guest console output)" >&2
fi
# Reproducible archive: fixed order, owner and timestamps.
find "$stage" -exec touch -h -d @0 {} +
(cd "$stage" && find . -print0 | LC_ALL=C sort -z |
    cpio --quiet --null -o -H newc --reproducible -R 0:0) > "$out/initramfs.img.tmp"
settle "$out/initramfs.img"

cat > "$out/guest.txt" <<EOT
kernel_release=$release
kernel_sha256=$kernel_sha
debian_kernel_package=$pkg
debian_kernel_deb=$(basename "$deb")
debian_kernel_release=$krel
agent_sha256=$agent_sha
EOT
echo "guest: $out/vmlinux ($release), $out/vmlinux-debian ($krel)," \
    "$out/initramfs.img ($(du -h "$out/initramfs.img" | cut -f1))"
