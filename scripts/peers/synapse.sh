#!/usr/bin/env bash
# A real Matrix homeserver (Synapse, from PyPI) on loopback, for the Matrix channel's end-to-end
# tests (crates/pincer/tests/matrix.rs) and benchmarks.
#
#   scripts/peers/synapse.sh start <dir> [port]   install (once), configure, start, register users
#   scripts/peers/synapse.sh stop  <dir>          stop the server of <dir> (SIGTERM, then SIGKILL)
#
# `start` installs Synapse into a virtualenv (idempotent: `python3 -m venv` + `pip install
# matrix-synapse==$SYNAPSE_VERSION`, shared by every <dir>, under a lock), writes a loopback-only
# config into <dir> (kept if it already exists, so a restart reuses the database and the users),
# starts Synapse in the background on 127.0.0.1:<port> (default 8008), waits for
# /_matrix/client/versions, registers a bot and a human user through the shared-secret admin API
# (or logs them in when they exist already), and prints the credentials as KEY=VALUE lines on
# stdout (everything else goes to stderr):
#
#   HOMESERVER=http://127.0.0.1:<port>   SERVER_NAME=localhost   SYNAPSE_PID=<pid>
#   BOT_USER_ID=@pincer-bot:localhost    BOT_PASSWORD=...        BOT_ACCESS_TOKEN=...
#   HUMAN_USER_ID=@alice:localhost       HUMAN_PASSWORD=...      HUMAN_ACCESS_TOKEN=...
#   HUMAN2_USER_ID=@bob:localhost        HUMAN2_PASSWORD=...     HUMAN2_ACCESS_TOKEN=...
#
# The config is written by hand rather than by `--generate-config`, which would add a federation
# listener and `trusted_key_servers: matrix.org`: here there is one `client` listener on
# 127.0.0.1, no federation (empty whitelist, no key servers), registration only through the
# shared secret, and every `rc_*` rate limit raised so fast tests never see M_LIMIT_EXCEEDED.
# Rooms are created with Synapse's default room version (12: room ids without `:server`).
#
# Environment: SYNAPSE_VERSION (default below), SYNAPSE_VENV (default
# <repo>/target/peers/synapse-venv), PYTHON (default python3).
set -euo pipefail

SYNAPSE_VERSION="${SYNAPSE_VERSION:-1.163.2}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${SYNAPSE_VENV:-$ROOT/target/peers/synapse-venv}"
PYTHON="${PYTHON:-python3}"

log() { echo "synapse.sh: $*" >&2; }
die() { log "$*"; exit 1; }

usage() { die "usage: $0 start|stop <dir> [port]"; }

[ $# -ge 2 ] || usage
cmd="$1"
dir="$2"
port="${3:-8008}"

# The virtualenv, installed once and shared; `flock` serialises concurrent first starts.
install_synapse() {
  mkdir -p "$(dirname "$VENV")"
  exec 9>"$VENV.lock"
  flock 9
  if [ -x "$VENV/bin/python" ] &&
    "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('matrix-synapse') != '$SYNAPSE_VERSION')" 2>/dev/null; then
    flock -u 9
    return
  fi
  log "installing matrix-synapse==$SYNAPSE_VERSION into $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" >&2 ||
    die "pip install matrix-synapse==$SYNAPSE_VERSION failed"
  flock -u 9
}

# A random secret (hex), from the venv's Python: no other tool is assumed.
secret() { "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(24))'; }

write_config() {
  mkdir -p "$dir/media_store"
  local shared macaroon form
  shared="$(secret)"
  macaroon="$(secret)"
  form="$(secret)"
  cat >"$dir/log.config" <<EOF
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: $dir/homeserver.log
    encoding: utf8
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
EOF
  cat >"$dir/homeserver.yaml" <<EOF
# Written by scripts/peers/synapse.sh: loopback only, no federation, test rate limits.
server_name: "localhost"
pid_file: "$dir/homeserver.pid"
public_baseurl: "http://127.0.0.1:$port/"
listeners:
  - port: $port
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "$dir/homeserver.db"
log_config: "$dir/log.config"
media_store_path: "$dir/media_store"
signing_key_path: "$dir/localhost.signing.key"
report_stats: false
enable_metrics: false
enable_registration: false
registration_shared_secret: "$shared"
macaroon_secret_key: "$macaroon"
form_secret: "$form"
# No federation: no key servers, nobody to federate with, no outbound federation requests.
trusted_key_servers: []
suppress_key_server_warning: true
federation_domain_whitelist: []
allow_public_rooms_over_federation: false
url_preview_enabled: false
presence:
  enabled: false
# Test users send fast: raise every rate limit (Synapse ignores keys it does not know).
rc_message: {per_second: 10000, burst_count: 100000}
rc_registration: {per_second: 10000, burst_count: 100000}
rc_registration_token_validity: {per_second: 10000, burst_count: 100000}
rc_login:
  address: {per_second: 10000, burst_count: 100000}
  account: {per_second: 10000, burst_count: 100000}
  failed_attempts: {per_second: 10000, burst_count: 100000}
rc_joins:
  local: {per_second: 10000, burst_count: 100000}
  remote: {per_second: 10000, burst_count: 100000}
rc_joins_per_room: {per_second: 10000, burst_count: 100000}
rc_room_creation: {per_second: 10000, burst_count: 100000}
rc_invites:
  per_room: {per_second: 10000, burst_count: 100000}
  per_user: {per_second: 10000, burst_count: 100000}
  per_issuer: {per_second: 10000, burst_count: 100000}
rc_third_party_invite: {per_second: 10000, burst_count: 100000}
rc_3pid_validation: {per_second: 10000, burst_count: 100000}
rc_admin_redaction: {per_second: 10000, burst_count: 100000}
rc_media_create: {per_second: 10000, burst_count: 100000}
rc_presence:
  per_user: {per_second: 10000, burst_count: 100000}
rc_delayed_event_mgmt: {per_second: 10000, burst_count: 100000}
rc_reports: {per_second: 10000, burst_count: 100000}
rc_user_directory: {per_second: 10000, burst_count: 100000}
rc_federation:
  window_size: 1000
  sleep_limit: 10000
  sleep_delay: 0
  reject_limit: 100000
  concurrent: 10000
EOF
}

# Register (or log in) the test users and print the KEY=VALUE lines. Plain urllib: no other
# tool is assumed.
users() {
  "$VENV/bin/python" - "$dir/homeserver.yaml" "http://127.0.0.1:$port" <<'PY'
import hashlib, hmac, json, re, sys, urllib.error, urllib.request

config_path, base = sys.argv[1], sys.argv[2]
shared = re.search(r'^registration_shared_secret: "([^"]+)"', open(config_path).read(), re.M).group(1)

def call(method, path, body=None, token=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")

def account(localpart, password, admin=False):
    nonce = call("GET", "/_synapse/admin/v1/register")[1]["nonce"]
    mac = hmac.new(shared.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join(p.encode() for p in (nonce, localpart, password, "admin" if admin else "notadmin")))
    status, body = call("POST", "/_synapse/admin/v1/register",
                        {"nonce": nonce, "username": localpart, "password": password,
                         "admin": admin, "mac": mac.hexdigest()})
    if status == 400 and body.get("errcode") == "M_USER_IN_USE":
        status, body = call("POST", "/_matrix/client/v3/login",
                            {"type": "m.login.password", "password": password,
                             "identifier": {"type": "m.id.user", "user": localpart}})
    if status != 200:
        sys.exit(f"synapse.sh: cannot register or log in {localpart}: HTTP {status} {body}")
    return body["user_id"], body["access_token"]

print(f"HOMESERVER={base}")
print("SERVER_NAME=localhost")
for key, localpart, password in (("BOT", "pincer-bot", "bot-password-1"),
                                 ("HUMAN", "alice", "alice-password-1"),
                                 ("HUMAN2", "bob", "bob-password-1")):
    user_id, token = account(localpart, password)
    print(f"{key}_USER_ID={user_id}")
    print(f"{key}_PASSWORD={password}")
    print(f"{key}_ACCESS_TOKEN={token}")
PY
}

# The pid of this directory's running Synapse. A killed daemon whose parent does not reap it
# (a container's pid 1 may not) stays a zombie that `kill -0` still finds: it counts as gone, as
# does a pid reused by another program.
running_pid() {
  [ -f "$dir/homeserver.pid" ] || return 1
  local pid state
  pid="$(cat "$dir/homeserver.pid")"
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  state="$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f1)"
  [ "$state" != Z ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$dir/homeserver.yaml" || return 1
  echo "$pid"
}

start() {
  command -v flock >/dev/null || die "flock (util-linux) is required"
  install_synapse
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ ! -f "$dir/homeserver.yaml" ]; then
    write_config
  fi
  grep -q "port: $port$" "$dir/homeserver.yaml" || die "$dir/homeserver.yaml listens on another port than $port"
  if ! running_pid >/dev/null; then
    rm -f "$dir/homeserver.pid"
    # --generate-keys writes the missing signing key and exits.
    "$VENV/bin/python" -m synapse.app.homeserver --config-path "$dir/homeserver.yaml" --generate-keys >&2 ||
      die "synapse --generate-keys failed"
    "$VENV/bin/python" -m synapse.app.homeserver --config-path "$dir/homeserver.yaml" --daemonize >&2 ||
      die "synapse did not start; see $dir/homeserver.log"
  fi
  # Wait (bounded) for the client API.
  "$VENV/bin/python" - "http://127.0.0.1:$port/_matrix/client/versions" <<'PY' || die "synapse did not answer in time; see $dir/homeserver.log"
import sys, time, urllib.request
deadline = time.monotonic() + 90
while True:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
            if r.status == 200:
                break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.1)
PY
  local pid
  pid="$(running_pid)" || die "synapse is not running; see $dir/homeserver.log"
  users
  echo "SYNAPSE_PID=$pid"
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      running_pid >/dev/null || break
      sleep 0.1
    done
    if running_pid >/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/homeserver.pid"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
