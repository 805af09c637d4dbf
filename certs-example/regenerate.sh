#!/usr/bin/env bash
# Regenerates the DEMO key material in this directory with the project's own CLI.
# Everything here is PUBLIC TEST MATERIAL for the local demo federation and the tests:
# never use these keys for a real node.
set -euo pipefail
cd "$(dirname "$0")"
bin=(cargo run --quiet --release --)
rm -rf nodes federation tls
mkdir -p federation
for node in IT-DCSA ES-UDYCO CO-DIJIN; do
  "${bin[@]}" keys generate --node "$node" --out "nodes/$node"
  for f in "nodes/$node/$node.sign.key" "nodes/$node/$node.enc.key"; do
    { echo "# DEMO KEY - public test material committed to the liaison repository. NEVER use it for a real node."; cat "$f"; } > "$f.tmp"
    mv "$f.tmp" "$f"; chmod 600 "$f"
  done
  cp "nodes/$node/$node.pub.toml" federation/
done
# The CA (tls/ca/, with the records of what it issued), every node's certificate, the CRL and
# the bad cases, made with the same code as `liaison pki init-ca / issue / revoke / crl`.
"${bin[@]}" pki demo --out tls >/dev/null
rm -f tls/ca/.lock
