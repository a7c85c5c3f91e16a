#!/usr/bin/env bash
# Generates a development CA and one serving certificate for spotkube's webhook and
# extender (Service DNS names, localhost, 127.0.0.1) into certs/out/, then prints the
# caBundle (base64 of the CA certificate) for a MutatingWebhookConfiguration.
# Usage: certs/generate.sh [OUT_DIR]   (re-running replaces the serving cert, keeps the CA)
set -euo pipefail

out="${1:-$(dirname "$0")/out}"
ns="${SPOTKUBE_NAMESPACE:-spotkube-system}"
days="${SPOTKUBE_CERT_DAYS:-365}"
mkdir -p "$out"
umask 077

if [[ ! -f "$out/ca.crt" || ! -f "$out/ca.key" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$out/ca.key" -out "$out/ca.crt" -days "$days" \
    -subj "/CN=spotkube development CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

sans="DNS:spotkube-webhook.$ns.svc,DNS:spotkube-webhook.$ns.svc.cluster.local"
sans+=",DNS:spotkube-extender.$ns.svc,DNS:spotkube-extender.$ns.svc.cluster.local"
sans+=",DNS:localhost,IP:127.0.0.1"

openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$out/tls.key" -out "$out/tls.csr" \
  -subj "/CN=spotkube-webhook.$ns.svc" 2>/dev/null
openssl x509 -req -in "$out/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -CAcreateserial -out "$out/tls.crt" -days "$days" \
  -extfile <(printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$sans") 2>/dev/null
rm -f "$out/tls.csr"
openssl verify -CAfile "$out/ca.crt" "$out/tls.crt" >/dev/null

echo "wrote $out/ca.crt $out/tls.crt $out/tls.key ($sans)" >&2
echo "caBundle:" >&2
base64 -w0 "$out/ca.crt"
echo
