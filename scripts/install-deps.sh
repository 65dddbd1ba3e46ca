#!/bin/bash
# Install what runvm needs on a Debian 12 (bookworm) host: QEMU and the
# guest kernel come from bookworm-backports, virtiofsd from crates.io, runc
# and crun as the yardsticks of tests and benchmarks, busybox-static for test
# rootfs. Idempotent: a second run only checks.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "install-deps: run as root (apt-get, /usr/local)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'EOT'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOT
fi

# protobuf-compiler: the CRI client of the containerd tests (crate k8s-cri)
# generates its gRPC code with protoc when it builds. gcc to bc: what building
# the guest kernel from source takes (guest/kernel.sh; libelf for objtool).
# dpkg-dev (dpkg-shlibdeps), binutils (strip) and man-db: building the
# Debian package and the test that installs it (scripts/deb.sh, deb-test.sh).
# e2fsprogs: mke2fs, which copies a container's files into a disk image
# with shared_fs = "none".
pkgs=(busybox-static runc crun cpio zstd xz-utils libseccomp-dev libcap-ng-dev pkg-config kmod git python3
      protobuf-compiler gcc make libc6-dev bison flex libelf-dev bc dpkg-dev binutils man-db e2fsprogs)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
have_qemu=$(command -v qemu-system-x86_64 || true)
# guest/build.sh downloads the kernel from backports: apt must know the suite.
have_bpo=$(apt-cache policy linux-image-cloud-amd64 2>/dev/null | grep -c bpo || true)
if [ ${#missing[@]} -gt 0 ] || [ -z "$have_qemu" ] || [ "$have_bpo" = 0 ]; then
    apt-get update -qq
fi
if [ -z "$have_qemu" ]; then
    apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
fi
if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The clients the tests drive runvm with. Their daemons are started by the
# tests, never as services: keep the packages from starting them. The CNI
# plugins give Podman's default network and the CRI pods theirs; iproute2
# makes the tests' own namespaces and veths. criu only answers Podman's
# version check before `podman container checkpoint` (runvm never runs it:
# docs/checkpoint.md).
clients=(podman conmon containerd docker.io uidmap iptables containernetworking-plugins iproute2 criu)
missing=()
for p in "${clients[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    policy=/usr/sbin/policy-rc.d
    [ -e "$policy" ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; added_policy=1; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ -z "${added_policy:-}" ] || rm -f "$policy"
fi

# virtiofsd is not packaged for bookworm; build the released crate.
virtiofsd=$(command -v virtiofsd || echo /usr/local/bin/virtiofsd)
if [ ! -x "$virtiofsd" ]; then
    cargo install --locked --quiet --root /usr/local virtiofsd --version 1.14.0
    virtiofsd=/usr/local/bin/virtiofsd
fi
echo "install-deps: $(qemu-system-x86_64 --version | head -n1), $("$virtiofsd" --version)," \
    "podman $(podman --version | awk '{print $3}'), containerd $(containerd --version | awk '{print $3}')," \
    "dockerd $(dockerd --version | awk '{print $3}' | tr -d ,)"
