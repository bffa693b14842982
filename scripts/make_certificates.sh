#!/usr/bin/env bash
# Generate a local certificate authority and a TLS certificate for the Flower SuperLink,
# FOR TESTING ONLY (self-signed CA, unencrypted private keys). In production use
# certificates from your organisation's CA.
#
# Usage: scripts/make_certificates.sh [--force] [OUT_DIR] [NAME_OR_IP ...]
#
#   --force       replace an existing CA in OUT_DIR (without it the script refuses: every device
#                 trusting the old ca.crt would stop connecting)
#   OUT_DIR       where to write the files (default: certificates)
#   NAME_OR_IP    extra host names / IP addresses the SuperLink is reached at, e.g. the
#                 server's LAN address: scripts/make_certificates.sh certificates 192.168.1.20 fl.example.org
#                 (localhost and 127.0.0.1 are always included)
#
# Writes:
#   ca.crt, ca.key          the test CA; copy ca.crt (never ca.key) to every device and to the
#                           machine that runs `flwr run`
#   server.crt, server.key  the SuperLink's certificate and key (stay on the server)
#
# With SUPERNODE_KEYS=N (e.g. SUPERNODE_KEYS=3) it also writes ECDSA key pairs
# supernode-0 ... supernode-N-1 (+ .pub) for SuperNode authentication
# (flower-superlink --enable-supernode-auth; needs ssh-keygen).
set -euo pipefail

FORCE=0
if [[ "${1:-}" == "--force" ]]; then
  FORCE=1
  shift
fi
OUT_DIR="${1:-certificates}"
shift || true
DAYS="${DAYS:-365}"

command -v openssl >/dev/null || { echo "openssl is required" >&2; exit 1; }
if [[ -e "$OUT_DIR/ca.crt" || -e "$OUT_DIR/ca.key" ]] && [[ "$FORCE" != 1 ]]; then
  echo "$OUT_DIR already holds a CA (ca.crt/ca.key); refusing to replace it (devices trust it). Use --force to replace it." >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
cd "$OUT_DIR"
umask 077

# Subject alternative names: what clients may call the server.
san="DNS:localhost,IP:127.0.0.1,IP:::1"
for name in "$@"; do
  if [[ "$name" =~ ^[0-9.]+$ || "$name" == *:* ]]; then
    san="$san,IP:$name"
  else
    san="$san,DNS:$name"
  fi
done

# 1. The certificate authority.
# ECDSA P-256 keys: as strong as RSA-3072 for TLS, and generated in milliseconds.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -nodes -days "$DAYS" \
  -keyout ca.key -out ca.crt -subj "/CN=Flower test CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

# 2. The SuperLink's key and certificate, signed by the CA.
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -nodes -keyout server.key -out server.csr \
  -subj "/CN=${1:-localhost}" 2>/dev/null
cat > server.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san
EOF
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
  -out server.crt -days "$DAYS" -sha256 -extfile server.ext 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 600 ca.key server.key
chmod 644 ca.crt server.crt
openssl verify -CAfile ca.crt server.crt >/dev/null

# 3. Optional: key pairs for SuperNode authentication.
for ((i = 0; i < ${SUPERNODE_KEYS:-0}; i++)); do
  command -v ssh-keygen >/dev/null || { echo "ssh-keygen is required for SUPERNODE_KEYS" >&2; exit 1; }
  rm -f "supernode-$i" "supernode-$i.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "supernode-$i"
  chmod 644 "supernode-$i.pub"
done

echo "Wrote $(pwd)/{ca.crt,ca.key,server.crt,server.key} (server certificate valid for: $san)"
