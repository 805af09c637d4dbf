#!/usr/bin/env python3
"""Independent check of the liaison test vectors, written from RFC 9052/9053 alone.

Uses only `cbor2` and `cryptography` (pip install cbor2 cryptography), none of liaison's code.
For every NAME.cose vector it:
  1. decodes the COSE_Encrypt (tag 96), reads the routing header from the protected header;
  2. derives the content key as ECDH-SS + HKDF-256 (alg -27): Z = X25519(recipient secret,
     sender public), HKDF-SHA-256(salt = header -20, IKM = Z, info = COSE_KDF_Context), and
     decrypts with ChaCha20/Poly1305 (alg 24) over Enc_structure;
  3. checks the plaintext is byte-identical to NAME.sign1.cbor;
  4. verifies the COSE_Sign1 (tag 18) Ed25519 (alg -19) signature over Sig_structure with the
     originator's public key from keys/NODE/NODE.pub.toml;
  5. compares the payload with NAME.json (timestamps as tag 1 epoch seconds).
Exit status 0 if every vector passes.
"""
import base64, datetime, glob, json, os, sys, tomllib
import cbor2
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HERE = os.path.dirname(os.path.abspath(__file__))

def load_toml(path):
    with open(path, "rb") as f:
        return tomllib.load(f)

def keys_of(node):
    d = os.path.join(HERE, "keys", node)
    pub = load_toml(os.path.join(d, f"{node}.pub.toml"))
    enc = load_toml(os.path.join(d, f"{node}.enc.key"))
    return {
        "sig_pub": Ed25519PublicKey.from_public_bytes(bytes.fromhex(pub["signing_key"])),
        "enc_pub": X25519PublicKey.from_public_bytes(bytes.fromhex(pub["encryption_key"])),
        "enc_sec": X25519PrivateKey.from_private_bytes(bytes.fromhex(enc["secret"])),
    }

def to_wire(v):
    """The JSON face -> the values the CBOR face carries (RFC 3339 -> epoch, base64 -> bytes)."""
    if isinstance(v, dict):
        return {k: to_wire(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_wire(x) for x in v]
    if isinstance(v, str) and len(v) == 20 and v[4] == "-" and v[10] == "T" and v.endswith("Z"):
        return int(datetime.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp())
    return v

def from_wire(v):
    if isinstance(v, datetime.datetime):  # cbor2 decodes tag 1 (epoch time) to a datetime
        return int(v.timestamp())
    if isinstance(v, dict):
        return {k: from_wire(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_wire(x) for x in v]
    return v

def check(name):
    sealed = open(os.path.join(HERE, f"{name}.cose"), "rb").read()
    enc = cbor2.loads(sealed)
    assert isinstance(enc, cbor2.CBORTag) and enc.tag == 96, "COSE_Encrypt tag"
    protected_b, unprotected, ciphertext, recipients = enc.value
    protected = cbor2.loads(protected_b)
    assert protected[1] == 24, "ChaCha20/Poly1305"
    route = protected["liaison.route"]
    [[r_prot_b, r_unprot, r_ct]] = recipients
    assert cbor2.loads(r_prot_b) == {1: -27} and r_ct == b"", "ECDH-SS + HKDF-256, direct"
    recipient, sender = keys_of(route["recipient"]), keys_of(route["sender"])
    z = recipient["enc_sec"].exchange(sender["enc_pub"])
    kdf_context = cbor2.dumps([24, [None, None, None], [None, None, None], [256, r_prot_b]])
    cek = HKDF(algorithm=hashes.SHA256(), length=32, salt=r_unprot[-20], info=kdf_context).derive(z)
    enc_structure = cbor2.dumps(["Encrypt", protected_b, b""])
    plaintext = ChaCha20Poly1305(cek).decrypt(unprotected[5], ciphertext, enc_structure)
    signed_file = open(os.path.join(HERE, f"{name}.sign1.cbor"), "rb").read()
    assert plaintext == signed_file, "decrypted COSE_Sign1 equals the .sign1.cbor file"

    s1 = cbor2.loads(plaintext)
    assert isinstance(s1, cbor2.CBORTag) and s1.tag == 18, "COSE_Sign1 tag"
    s_prot_b, _, payload, signature = s1.value
    s_prot = cbor2.loads(s_prot_b)
    assert s_prot[1] == -19, "Ed25519"
    originator = s_prot["liaison.orig"]
    assert s_prot[4].decode().startswith(originator + "/sig/"), "kid names the originator"
    sig_structure = cbor2.dumps(["Signature1", s_prot_b, b"", payload])
    keys_of(originator)["sig_pub"].verify(signature, sig_structure)  # raises if invalid

    packet = from_wire(cbor2.loads(payload))
    expected = to_wire(json.load(open(os.path.join(HERE, f"{name}.json"))))
    att = packet["body"].get("InformationResponse", {}).get("attachments", [])
    for a in att:
        a["content"] = base64.b64encode(a["content"]).decode()
        a["digest"] = "sha256:" + a["digest"].hex()
    if "DeliveryReceipt" in packet["body"]:
        for item in packet["body"]["DeliveryReceipt"]["receipts"]:
            item["sealed_digest"] = "sha256:" + item["sealed_digest"].hex()
    assert packet == expected, f"payload differs from {name}.json"
    assert route["packet_id"] == packet["envelope"]["id"]
    print(f"ok  {name}: {route['sender']} -> {route['recipient']}, decrypted, signature by {s_prot[4].decode()} valid")

def main():
    names = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(HERE, "*.cose")))
    for n in names:
        check(n)
    print(f"{len(names)} vectors verified independently")

if __name__ == "__main__":
    sys.exit(main())
