#!/usr/bin/env bash
# Make the certificates for Berth's mTLS mode with openssl:
#   ca.crt / ca.key          a private CA (10 years)
#   server.crt / server.key  Berth's serving pair; SAN 127.0.0.1, localhost,
#                            berth.berth-system.svc (+ .cluster.local) (1 year)
#   client.crt / client.key  kube-scheduler's client pair, CN berth-scheduler (1 year)
# all signed by the CA, ECDSA P-256.
#
# Usage: scripts/make-certs.sh [DIR]          (DIR defaults to certs/)
#   EXTRA_SANS="DNS:berth.example.com,IP:10.0.0.5"  add subject alternative names
#   FORCE=1                                         remake everything
#
# Idempotent: a file that is present, signed by the CA in DIR, and valid for at least
# 30 more days is kept; anything missing, expiring or not matching the CA is remade
# (a new CA therefore remakes both pairs). Keys are written with mode 0600.
#
# For the TLS overlay (deploy/overlays/tls), put them in the Secret berth-tls:
#   kubectl -n berth-system create secret generic berth-tls \
#     --from-file=ca.crt=DIR/ca.crt \
#     --from-file=tls.crt=DIR/server.crt --from-file=tls.key=DIR/server.key \
#     --from-file=client.crt=DIR/client.crt --from-file=client.key=DIR/client.key
set -euo pipefail

dir=${1:-certs}
min_valid_seconds=$((30 * 24 * 3600))
server_sans="IP:127.0.0.1,DNS:localhost,DNS:berth.berth-system.svc,DNS:berth.berth-system.svc.cluster.local"
if [ -n "${EXTRA_SANS:-}" ]; then server_sans="$server_sans,$EXTRA_SANS"; fi

command -v openssl >/dev/null || { echo "make-certs.sh: openssl not found" >&2; exit 1; }
mkdir -p "$dir"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

made=()
kept=()

newkey() {  # path
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# A certificate is good if it (and its key) exist, it is still valid for 30 days,
# it chains to ca.crt, and the key matches it.
good() {  # name
  local crt="$dir/$1.crt" key="$dir/$1.key"
  [ -z "${FORCE:-}" ] && [ -s "$crt" ] && [ -s "$key" ] || return 1
  openssl x509 -in "$crt" -noout -checkend "$min_valid_seconds" >/dev/null 2>&1 || return 1
  if [ "$1" != ca ]; then
    openssl verify -CAfile "$dir/ca.crt" "$crt" >/dev/null 2>&1 || return 1
  fi
  [ "$(openssl x509 -in "$crt" -noout -pubkey 2>/dev/null)" = "$(openssl pkey -in "$key" -pubout 2>/dev/null)" ] || return 1
  if [ "$1" = server ]; then  # the wanted names must all be there
    local have
    have=$(openssl x509 -in "$crt" -noout -ext subjectAltName 2>/dev/null | tr -d ' \n' \
      | sed -e 's/^.*SubjectAlternativeName://' -e 's/IPAddress:/IP:/g')
    local san
    for san in ${server_sans//,/ }; do
      case ",$have," in *",$san,"*) ;; *) return 1 ;; esac
    done
  fi
}

# --- CA ---
if good ca; then
  kept+=("$dir/ca.crt")
  ca_new=""
else
  newkey "$tmp/ca.key"
  cat > "$tmp/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
O = berth
CN = berth-ca
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  openssl req -x509 -new -key "$tmp/ca.key" -config "$tmp/ca.cnf" -days 3650 -sha256 \
    -out "$tmp/ca.crt" 2>/dev/null
  mv "$tmp/ca.key" "$dir/ca.key"
  mv "$tmp/ca.crt" "$dir/ca.crt"
  chmod 0644 "$dir/ca.crt"
  made+=("$dir/ca.crt (CN berth-ca, 10 years)")
  ca_new=1
fi

# --- leaf pairs ---
leaf() {  # name CN extendedKeyUsage [SANs]
  local name=$1 cn=$2 eku=$3 sans=${4:-}
  if [ -z "$ca_new" ] && good "$name"; then
    kept+=("$dir/$name.crt")
    return
  fi
  newkey "$tmp/$name.key"
  openssl req -new -key "$tmp/$name.key" -subj "/O=berth/CN=$cn" -out "$tmp/$name.csr" 2>/dev/null
  {
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature"
    echo "extendedKeyUsage = $eku"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid"
    if [ -n "$sans" ]; then echo "subjectAltName = $sans"; fi
  } > "$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 -extfile "$tmp/$name.ext" \
    -out "$tmp/$name.crt" 2>/dev/null
  openssl verify -CAfile "$dir/ca.crt" "$tmp/$name.crt" >/dev/null
  mv "$tmp/$name.key" "$dir/$name.key"
  mv "$tmp/$name.crt" "$dir/$name.crt"
  chmod 0644 "$dir/$name.crt"
  made+=("$dir/$name.crt (CN $cn${sans:+, SAN $sans}, 1 year)")
}

leaf server berth serverAuth "$server_sans"
leaf client berth-scheduler clientAuth

if [ ${#made[@]} -gt 0 ]; then
  echo "made:"
  printf '  %s\n' "${made[@]}"
fi
if [ ${#kept[@]} -gt 0 ]; then
  echo "kept (present and valid):"
  printf '  %s\n' "${kept[@]}"
fi
echo "keys: $dir/ca.key $dir/server.key $dir/client.key (mode 0600)"
