#!/bin/bash
# Build target/deb/runvm_<version>-<revision>_amd64.deb (make deb).
#
# dpkg-deb from a staged tree, not cargo-deb: most of the package is not
# cargo's output (the guest kernel and initramfs from guest/build.sh, the
# virtiofsd that scripts/install-deps.sh built from crates.io, the man pages
# and completions the binary generates), and `make install DESTDIR=` already
# stages exactly that tree; cargo-deb would list the same files again in
# Cargo.toml and need a build of its own on every fresh machine.
#
# Environment: DEB_REVISION (default 1), VIRTIOFSD (default: the one in
# PATH, or /usr/local/bin/virtiofsd).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
revision=${DEB_REVISION:-1}
out=target/deb
stage=$out/stage
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"

make -s install DESTDIR="$PWD/$stage" PREFIX=/usr

# virtiofsd: bookworm has no package of it, so the package carries the one
# built from crates.io, with its licences.
virtiofsd=${VIRTIOFSD:-$(command -v virtiofsd || echo /usr/local/bin/virtiofsd)}
vfs_version=$("$virtiofsd" --version | awk '{print $2}')
vfs_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"virtiofsd-$vfs_version" 2>/dev/null | head -n1)
[ -n "$vfs_src" ] || { echo "deb: the source of virtiofsd $vfs_version (for its licences) is not in cargo's registry; run scripts/install-deps.sh" >&2; exit 1; }
install -D -m 0755 "$virtiofsd" "$stage/usr/libexec/runvm/virtiofsd"
strip --strip-unneeded "$stage/usr/libexec/runvm/virtiofsd" "$stage/usr/bin/runvm"

# The configuration: the documented defaults (docs/config.md's block, which
# a unit test compares with the code's), marked as a conffile.
install -d "$stage/etc/runvm/config.d"
{
    echo "# runvm's configuration: every key with its default (docs/config.md in"
    echo "# /usr/share/doc/runvm). \$RUNVM_CONFIG names another file."
    echo
    sed -n '/^```toml$/,/^```$/p' docs/config.md | sed '1d;$d'
} > "$stage/etc/runvm/config.toml"
echo /etc/runvm/config.toml > "$stage/DEBIAN/conffiles"

doc=$stage/usr/share/doc/runvm
install -d "$doc/examples"
install -m 0644 README.md docs/*.md "$doc/"
install -m 0644 docs/examples/* "$doc/examples/"
install -m 0644 "$vfs_src/LICENSE-BSD-3-Clause" "$doc/virtiofsd.LICENSE-BSD-3-Clause"
sed "s/@VFS_VERSION@/$vfs_version/" scripts/deb/copyright > "$doc/copyright"
printf 'runvm (%s) unstable; urgency=medium\n\n  * Built from commit %s.\n\n -- runvm developers <runvm@localhost>  %s\n' \
    "$version-$revision" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" "$(date -R)" \
    | gzip -9n > "$doc/changelog.Debian.gz"

for script in prerm postrm; do
    install -m 0755 "scripts/deb/$script" "$stage/DEBIAN/$script"
done

# Depends: the shared libraries of runvm and virtiofsd as dpkg-shlibdeps
# finds them, and QEMU: templates save and restore VMs through a `file:`
# migration, which bookworm's QEMU 7.2 lacks (tested with backports' 10.0).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/debian"
printf 'Source: runvm\n\nPackage: runvm\nArchitecture: any\n' > "$work/debian/control"
shlibs=$(cd "$work" && dpkg-shlibdeps -O "$OLDPWD/$stage/usr/bin/runvm" "$OLDPWD/$stage/usr/libexec/runvm/virtiofsd" 2>/dev/null \
    | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<EOF
Package: runvm
Version: $version-$revision
Architecture: amd64
Maintainer: runvm developers <runvm@localhost>
Installed-Size: $size
Depends: $shlibs, qemu-system-x86 (>= 1:8.2)
Suggests: e2fsprogs (>= 1.43)
Section: admin
Priority: optional
Description: runc-compatible OCI runtime that runs every container in a VM
 runvm takes runc's command line, so containerd, Docker, Podman and scripts
 use it as they use runc, but each container runs in a lightweight QEMU VM
 with a guest kernel of its own, so a kernel exploit in a container does not
 reach the host. The package carries the guest kernel and initramfs, and a
 virtiofsd (built from crates.io) that serves the container's rootfs to the
 guest.
EOF

deb="$out/runvm_${version}-${revision}_amd64.deb"
dpkg-deb --root-owner-group -Zgzip --build "$stage" "$deb" >/dev/null
echo "$deb"
