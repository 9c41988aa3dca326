# Sourced by scripts/test.sh: installs and starts what the web tests use for real, and exports
# where to find it.
#   - PostgreSQL from Debian's packages, a role `rapport` that may create the throw-away
#     databases the tests make (RAPPORT_TEST_POSTGRES_URL), serving TLS with a self-signed
#     certificate (RAPPORT_TEST_POSTGRES_CA);
#   - Chromium from Debian's packages and playwright-core from npm (no browser download) for
#     the page test (RAPPORT_TEST_CHROMIUM, web/tests/node_modules).
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_missing=()
command -v pg_ctlcluster >/dev/null 2>&1 || apt_missing+=(postgresql)
[ -x /usr/bin/chromium ] || apt_missing+=(chromium)
command -v npm >/dev/null 2>&1 || apt_missing+=(nodejs npm)
# The test cluster's TLS certificates are made with openssl.
command -v openssl >/dev/null 2>&1 || apt_missing+=(openssl)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "installing: ${apt_missing[*]}" >&2
  apt_log=$(mktemp)
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"; } >"$apt_log" 2>&1 \
    || { cat "$apt_log" >&2; exit 1; }
  rm -f "$apt_log"
fi

# The newest installed cluster; Debian's package creates `main` on install.
pg_version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$pg_version main"; then
  $SUDO pg_createcluster "$pg_version" main >/dev/null
fi
# TLS: a throw-away certificate authority and a server certificate it signs for localhost and
# 127.0.0.1 (rustls, like browsers, refuses a CA certificate used as the server's own), so the
# tests can connect with sslmode=verify-full and the CA as root (RAPPORT_TEST_POSTGRES_CA). Made
# once; a running server is reloaded when they are new.
pg_tls_dir=/var/lib/postgresql/rapport-tls
pg_tls_conf=/etc/postgresql/$pg_version/main/conf.d/rapport-tls.conf
if [ ! -f "$pg_tls_dir/ca.crt" ] || [ ! -f "$pg_tls_conf" ]; then
  $SUDO mkdir -p "$pg_tls_dir"
  tls_tmp=$(mktemp -d)
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=Rapport test CA" -keyout "$tls_tmp/ca.key" -out "$tls_tmp/ca.crt" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$tls_tmp/server.key" -out "$tls_tmp/server.csr" >/dev/null 2>&1
  printf "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n" >"$tls_tmp/server.ext"
  openssl x509 -req -in "$tls_tmp/server.csr" -CA "$tls_tmp/ca.crt" -CAkey "$tls_tmp/ca.key" -CAcreateserial -days 3650 -extfile "$tls_tmp/server.ext" -out "$tls_tmp/server.crt" >/dev/null 2>&1
  $SUDO cp "$tls_tmp/ca.crt" "$tls_tmp/server.crt" "$tls_tmp/server.key" "$pg_tls_dir/"
  rm -rf "$tls_tmp"
  $SUDO chown -R postgres:postgres "$pg_tls_dir"
  $SUDO chmod 600 "$pg_tls_dir/server.key"
  printf "ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\n" "$pg_tls_dir/server.crt" "$pg_tls_dir/server.key" | $SUDO tee "$pg_tls_conf" >/dev/null
  if pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main" {print $4}' | grep -qx online; then
    $SUDO pg_ctlcluster "$pg_version" main reload
  fi
fi
pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main" {print $4}' | grep -qx online || $SUDO pg_ctlcluster "$pg_version" main start
pg_port=$(pg_lsclusters -h | awk -v v="$pg_version" '$1 == v && $2 == "main" {print $3}')
as_postgres() { if [ "$(id -u)" -eq 0 ]; then su postgres -c "$1"; else sudo -u postgres sh -c "$1"; fi; }
for _ in $(seq 1 30); do as_postgres "psql -p $pg_port -tAc 'SELECT 1'" >/dev/null 2>&1 && break; sleep 1; done
if ! as_postgres "psql -p $pg_port -tAc \"SELECT 1 FROM pg_roles WHERE rolname = 'rapport'\"" | grep -q 1; then
  as_postgres "psql -p $pg_port -q -c \"CREATE ROLE rapport LOGIN PASSWORD 'rapport' CREATEDB\""
fi
if ! as_postgres "psql -p $pg_port -tAc \"SELECT 1 FROM pg_database WHERE datname = 'rapport'\"" | grep -q 1; then
  as_postgres "createdb -p $pg_port -O rapport rapport"
fi
export RAPPORT_TEST_POSTGRES_URL="postgres://rapport:rapport@127.0.0.1:$pg_port/rapport"
export RAPPORT_TEST_POSTGRES_CA="$pg_tls_dir/ca.crt"
# The chaos drill restarts the database under load with this command.
export RAPPORT_TEST_POSTGRES_RESTART="${SUDO:+$SUDO }pg_ctlcluster $pg_version main restart"

# playwright-core only: it drives the system's Chromium and downloads no browser.
if [ ! -d web/tests/node_modules/playwright-core ]; then
  (cd web/tests && npm ci --no-audit --no-fund --loglevel=error)
fi
export RAPPORT_TEST_CHROMIUM=/usr/bin/chromium
