#!/bin/bash
# The package as an operator gets it (make deb-test, part of make test):
# build it, install it with apt-get, run containers with the installed
# /usr/bin/runvm and its defaults (the guest from /usr/share/runvm, the
# package's virtiofsd, /etc/runvm/config.toml), upgrade it under a running
# container, then purge it and check that nothing it installed or started
# is left.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }
step() { echo "deb-test: $*"; }

if dpkg -s runvm >/dev/null 2>&1; then
    fail "a runvm package is installed already; remove it first (dpkg -P runvm)"
fi

deb1=$(DEB_REVISION=1 scripts/deb.sh | tail -n1)
deb2=$(DEB_REVISION=2 scripts/deb.sh | tail -n1)

tmp=$(mktemp -d)
ids=()
cleanup() {
    for id in "${ids[@]}"; do
        [ -x /usr/bin/runvm ] && /usr/bin/runvm delete --force "$id" >/dev/null 2>&1 || true
    done
    if dpkg -s runvm >/dev/null 2>&1; then
        dpkg -P runvm >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# The installed runvm, with nothing of the tree's: a short PATH, no
# RUNVM_CONFIG.
runvm() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /usr/bin/runvm "$@"; }

# Wait up to $1 seconds for the command after it to succeed.
wait_for() {
    local secs=$1; shift
    local end=$((SECONDS + secs))
    until "$@"; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.2
    done
}

# A busybox bundle whose process runs "$@" (no terminal).
bundle() {
    local dir=$1; shift
    mkdir -p "$dir/rootfs/bin"
    cp /bin/busybox "$dir/rootfs/bin/"
    for tool in sh echo uname sleep cat; do ln -s busybox "$dir/rootfs/bin/$tool"; done
    (cd "$dir" && runvm spec)
    python3 - "$dir/config.json" "$@" <<'EOF'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = args
json.dump(spec, open(path, "w"))
EOF
}

step "apt-get install ./$deb1"
apt-get install -y -qq "./$deb1" >/dev/null
[ "$(dpkg-query -W -f '${Version}' runvm)" = 0.1.0-1 ] || fail "not installed: $(dpkg -l runvm | tail -n1)"
dpkg -L runvm | sort > "$tmp/files"

page=$(man -w runvm-create) || fail "man -w runvm-create found no page"
[ "$page" = /usr/share/man/man8/runvm-create.8.gz ] || fail "man -w runvm-create: $page"
man runvm-create 2>/dev/null | grep -q "Create a container in a new VM" || fail "runvm-create(8) is not runvm's page"
[ -s /usr/share/bash-completion/completions/runvm ] || fail "no bash completion"

report=$(runvm check) || fail "runvm check exited $?: $report"
for line in "✔ configuration: /etc/runvm/config.toml" "✔ virtiofsd: /usr/libexec/runvm/virtiofsd" \
    "✔ guest kernel: /usr/share/runvm/vmlinux" "✔ guest initramfs: /usr/share/runvm/initramfs.img"; do
    grep -qxF "$line" <<<"$report" || fail "runvm check has no line '$line':"$'\n'"$report"
done

id1=runvm-deb-test-$$-1
ids+=("$id1")
bundle "$tmp/b1" sh -c 'echo "hello from $(uname -r)"; exit 3'
step "runvm run $id1"
set +e
out=$(cd "$tmp/b1" && runvm run "$id1" 2>&1)
rc=$?
set -e
[ $rc = 3 ] || fail "run exited $rc, not the container's 3: $out"
grep -Eq '^hello from .*-runvm$' <<<"$out" || fail "run printed '$out', not the guest kernel's release"
runvm state "$id1" >/dev/null 2>&1 && fail "run left $id1's state"

# A container running across an upgrade of the package.
id2=runvm-deb-test-$$-2
ids+=("$id2")
bundle "$tmp/b2" sh -c 'trap "exit 42" TERM; echo ready; while :; do sleep 1; done'
step "runvm run -d $id2"
(cd "$tmp/b2" && runvm run -d --pid-file "$tmp/pid2" "$id2" >"$tmp/out2" 2>&1 </dev/null)
wait_for 120 grep -qx ready "$tmp/out2" || fail "$id2 did not print ready: $(cat "$tmp/out2")"
shim=$(cat "$tmp/pid2")

step "apt-get install ./$deb2 (upgrade)"
apt-get install -y -qq "./$deb2" >/dev/null
[ "$(dpkg-query -W -f '${Version}' runvm)" = 0.1.0-2 ] || fail "not upgraded"
kill -0 "$shim" 2>/dev/null || fail "the upgrade ended $id2's shim"
status=$(runvm state "$id2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')
[ "$status" = running ] || fail "$id2 is $status after the upgrade"
out=$(runvm exec "$id2" echo after-upgrade) || fail "exec after the upgrade: $out"
[ "$out" = after-upgrade ] || fail "exec after the upgrade printed '$out'"
runvm kill "$id2" TERM
stopped() { [ "$(runvm state "$id2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')" = stopped ]; }
wait_for 60 stopped || fail "$id2 did not stop on TERM"
runvm delete "$id2"

step "dpkg -P runvm"
dpkg -P runvm >/dev/null
dpkg -s runvm >/dev/null 2>&1 && fail "runvm is still installed"
while read -r f; do
    [ -d "$f" ] && continue
    [ -e "$f" ] || [ -L "$f" ] && fail "$f is left after purge"
done < "$tmp/files"
[ -e /etc/runvm ] && fail "/etc/runvm is left after purge"
[ -e /usr/share/runvm ] && fail "/usr/share/runvm is left after purge"
[ -e /dev/shm/runvm/template ] && fail "the template is left after purge"
left=$(pgrep -af '/usr/bin/runvm|/usr/libexec/runvm|/usr/share/runvm' || true)
[ -z "$left" ] || fail "processes left after purge:"$'\n'"$left"
for id in "${ids[@]}"; do
    [ -e "/run/runvm/$id" ] && fail "$id's state is left"
done
step "ok: installed, ran, upgraded under a running container, purged"
