#!/usr/bin/env bash
# Regenerates the sealed test vectors in this directory with the project's own CLI and the demo
# keys copied into keys/ (public test material). Each seal uses fresh random salt and IV, so the
# bytes change on every run; tests/offline/vectors.rs checks whatever is committed.
set -euo pipefail
cd "$(dirname "$0")"
root=../..
bin=("$root/target/release/liaison")
(cd "$root" && cargo build --quiet --release)
rm -rf keys && mkdir -p keys
for n in IT-DCSA ES-UDYCO CO-DIJIN; do
  mkdir -p "keys/$n"
  cp "$root/certs-example/nodes/$n/"* "keys/$n/"
  chmod 600 "keys/$n/"*.key
done
rm -f *.cose *.sign1.cbor *.json
seal() { # name json from to
  local name=$1 json=$2 from=$3 to=$4 tmp
  tmp=$(mktemp -d)
  cp "$root/schemas/examples/$json" "$name.json"
  "${bin[@]}" packet seal --keys "keys/$from" --keyring "$root/certs-example/federation" --out "$tmp" "$name.json" >/dev/null
  mv "$tmp"/*."$to".cose "$name.cose"
  "${bin[@]}" packet open --keys "keys/$to" --keyring "$root/certs-example/federation" \
    --at 2026-11-26T17:00:00Z --signed-out "$name.sign1.cbor" "$name.cose" >/dev/null 2>&1
  rm -rf "$tmp"
}
seal controlled-delivery-alert controlled-delivery-alert.json CO-DIJIN ES-UDYCO
seal information-request information-request.json IT-DCSA ES-UDYCO
seal information-response information-response.json ES-UDYCO IT-DCSA
seal delivery-receipt delivery-receipt.json ES-UDYCO IT-DCSA
ls -l
