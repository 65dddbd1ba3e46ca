#!/bin/bash
# Build runvm's guest kernel: Debian's linux-source package at a pinned
# version, configured with guest/kernel.config on top of allnoconfig, no
# modules. The result is cached under a key of the version, the config and
# this script, so an unchanged kernel is never rebuilt.
#
# usage: guest/kernel.sh OUT_VMLINUX
# Prints the kernel's release on its last line (guest/build.sh records it).
# RUNVM_KERNEL_VERSION overrides the pinned package version.
set -euo pipefail

out=${1:?usage: kernel.sh OUT_VMLINUX}
here=$(cd "$(dirname "$0")" && pwd)
cache=${GUEST_CACHE:-$here/../target/guest-cache}
pkg=linux-source-6.12
# bookworm-security keeps a few versions of the package; this is one of them.
# Bump it (and re-run the suite) when the archive drops it.
version=${RUNVM_KERNEL_VERSION:-6.12.118-1~deb12u1}
fragment=$here/kernel.config

mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
key=$( (echo "$pkg=$version"; cat "$fragment" "$0") | sha256sum | cut -c1-16)
built=$cache/vmlinux-$key
# A file left as it is when its content is: templates are stamped with the
# kernel's size and mtime, and an unchanged kernel must not make them stale.
install_to_out() {
    cmp -s "$built" "$out" || { cp "$built" "$out.tmp" && mv "$out.tmp" "$out"; }
}
if [ -f "$built" ] && [ -f "$built.release" ]; then
    install_to_out
    echo "guest: kernel $(cat "$built.release") from the cache ($key)" >&2
    cat "$built.release"
    exit 0
fi

# --- the source ----------------------------------------------------------------
deb=$cache/${pkg}_${version}_all.deb
if [ ! -f "$deb" ]; then
    (cd "$cache" && apt-get download "$pkg=$version" 2>&1 |
        grep -v '^W: Download is performed unsandboxed' || true)
    if [ ! -f "$deb" ]; then
        echo "guest: cannot download $pkg=$version; apt knows:" >&2
        apt-cache madison "$pkg" >&2 || true
        echo "guest: is bookworm-security in apt's sources? Otherwise set RUNVM_KERNEL_VERSION" \
            "to a version above, or bump the pin in guest/kernel.sh" >&2
        exit 1
    fi
fi
src=$cache/src-$version
if [ ! -f "$src/.unpacked" ]; then
    echo "guest: unpacking $pkg $version" >&2
    rm -rf "$src" "$src.tmp" "$src.deb"
    mkdir -p "$src.tmp" "$src.deb"
    # The package holds one tarball of the tree (which has a usr/ of its own).
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$src.deb" "./usr/src/$pkg.tar.xz"
    tar -xJf "$src.deb/usr/src/$pkg.tar.xz" -C "$src.tmp" --strip-components=1
    rm -rf "$src.deb"
    touch "$src.tmp/.unpacked"
    mv "$src.tmp" "$src"
fi

# --- configure: allnoconfig plus the fragment, every fragment line checked ----------
obj=$cache/kbuild
mkdir -p "$obj"
kmake=(make -C "$src" O="$obj" KBUILD_BUILD_USER=runvm KBUILD_BUILD_HOST=runvm
    KBUILD_BUILD_TIMESTAMP="Debian $pkg $version")
"${kmake[@]}" -s KCONFIG_ALLCONFIG="$fragment" allnoconfig
missing=()
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) grep -qxF "$line" "$obj/.config" || missing+=("$line") ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }
            opt=${opt%% *}
            ! grep -q "^$opt=" "$obj/.config" || missing+=("$line")
            ;;
    esac
done < "$fragment"
if [ ${#missing[@]} -gt 0 ]; then
    echo "guest: kernel.config asks for options the kernel's Kconfig did not keep" \
        "(a dependency is missing from the fragment):" >&2
    printf '  %s\n' "${missing[@]}" >&2
    exit 1
fi

# --- build ---------------------------------------------------------------------
echo "guest: building the kernel ($pkg $version, $(nproc) jobs; a few minutes)" >&2
start=$(date +%s)
if ! "${kmake[@]}" -j"$(nproc)" vmlinux > "$obj/build.log" 2>&1; then
    tail -n 40 "$obj/build.log" >&2
    echo "guest: kernel build failed; the whole log is $obj/build.log" >&2
    exit 1
fi
release=$("${kmake[@]}" -s kernelrelease)
cp "$obj/vmlinux" "$built.tmp"
echo "$release" > "$built.release"
mv "$built.tmp" "$built"
install_to_out
echo "guest: kernel $release built in $(($(date +%s) - start)) s ($key)" >&2
echo "$release"
