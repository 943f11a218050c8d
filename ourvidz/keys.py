"""Ed25519 keys for access tokens: making them, reading them, and their public
halves as JWKS documents.

The gateway signs user and admin tokens with its private key; each worker
signs its own worker tokens with a key of its own. Services verify with the
public keys only (`AUTH_JWKS` for the gateway's, `AUTH_WORKER_JWKS` for the
workers'). A key's id (`kid`) is its RFC 7638 JWK thumbprint.

    python -m ourvidz.keys generate DIR [--name NAME] [--jwks FILE]

writes DIR/NAME.pem (PKCS8, mode 0600) and adds its public key to DIR/FILE
(default jwks.json), creating the file when needed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "EdDSA"
# The members of a JWK that may be published; anything else (a private "d")
# never leaves the process.
PUBLIC_MEMBERS = ("kty", "crv", "x", "kid", "alg", "use")
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes | str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PKCS8 PEM; ValueError for anything else."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("not an unencrypted PKCS8 PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the key is not an Ed25519 key")
    return key


def thumbprint(jwk: dict) -> str:
    """The RFC 7638 thumbprint (SHA-256, base64url) of an OKP public key."""
    required = {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def public_jwk(key: Ed25519PrivateKey | Ed25519PublicKey) -> dict:
    """The public half of `key` as a JWK, with its thumbprint as `kid`."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
    return {**jwk, "kid": thumbprint(jwk), "alg": ALGORITHM, "use": "sig"}


def public_only(jwks: dict) -> dict:
    """A JWKS document with only the publishable members of each key."""
    return {"keys": [{k: v for k, v in key.items() if k in PUBLIC_MEMBERS} for key in jwks["keys"]]}


def read_jwks(path: Path) -> dict:
    if not path.exists():
        return {"keys": []}
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"{path} is not a JWKS document (an object with a 'keys' list)")
    return doc


def add_to_jwks(path: Path, jwk: dict) -> dict:
    """Add `jwk` to the JWKS file at `path` (once per kid); returns the document."""
    doc = read_jwks(path)
    if all(key.get("kid") != jwk["kid"] for key in doc["keys"]):
        doc["keys"].append(jwk)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return doc


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write `key` as PEM, readable by its owner only; never over an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(private_pem(key))


def generate(folder: Path, name: str = "gateway", jwks: str = "jwks.json") -> tuple[Path, dict]:
    """A new key: `folder/name.pem` (0600) and its public JWK added to
    `folder/jwks`. Refuses to replace an existing private key."""
    folder.mkdir(parents=True, exist_ok=True)
    pem = folder / f"{name}.pem"
    if pem.exists():
        raise FileExistsError(f"{pem} exists; remove it first to replace the key")
    key = generate_private_key()
    write_private_key(pem, key)
    jwk = public_jwk(key)
    add_to_jwks(folder / jwks, jwk)
    return pem, jwk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ourvidz.keys", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="a new Ed25519 private key and its public key in a JWKS file"
    )
    gen.add_argument("folder", type=Path)
    gen.add_argument("--name", default="gateway", help="the key file's name (NAME.pem)")
    gen.add_argument(
        "--jwks",
        default="jwks.json",
        help="the JWKS file in FOLDER that gets the public key (default jwks.json; "
        "use worker-jwks.json for a worker's key)",
    )
    pub = commands.add_parser("public", help="print the public JWK of a PEM private key")
    pub.add_argument("pem", type=Path)
    args = parser.parse_args(argv)
    if args.command == "generate":
        if not args.name or "/" in args.name or args.name.startswith("."):
            parser.error("--name must be a plain file name")
        try:
            pem, jwk = generate(args.folder, args.name, args.jwks)
        except FileExistsError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"wrote {pem}; kid {jwk['kid']} added to {args.folder / args.jwks}")
        return 0
    try:
        key = load_private_key(args.pem.read_bytes())
    except (OSError, ValueError) as exc:
        print(f"{args.pem}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(public_jwk(key), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
