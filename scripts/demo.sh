#!/bin/bash
# Run `uname -a` in a busybox container in its own VM, next to the host's.
set -euo pipefail
runvm=$(realpath "${1:-target/release/runvm}")
bundle=$(mktemp -d /tmp/runvm-demo.XXXXXX)
trap 'rm -rf "$bundle"' EXIT
mkdir -p "$bundle/rootfs/bin"
cp /bin/busybox "$bundle/rootfs/bin/busybox"
for applet in sh uname echo cat ls; do ln -s busybox "$bundle/rootfs/bin/$applet"; done
cd "$bundle"
"$runvm" spec
python3 - <<'EOT'
import json
c = json.load(open("config.json"))
c["process"]["args"] = ["uname", "-a"]
json.dump(c, open("config.json", "w"), indent=2)
EOT
echo "host:      $(uname -a)"
printf 'container: '
"$runvm" run "demo-$$"
