#!/usr/bin/env bash
# Command 1 of the README: install what is missing, start PostgreSQL and Redis when they are down, create .venv,
# then run the quick start (a backup of every class, both restore drills, the health report). Idempotent: with
# everything in place it installs nothing and only re-runs the quick start.
#
#   ./setup.sh                  set up, then run the quick start (exit code != 0 when anything is not green)
#   ./setup.sh --no-quickstart  set up only (what .ci/run does before the tests)
#   ./setup.sh --check          only list the Debian packages that are missing (exit 1 if any)
set -euo pipefail
cd "$(dirname "$0")"

quickstart=1 check=0
for arg in "$@"; do
  case "$arg" in
    --no-quickstart) quickstart=0 ;;
    --check) check=1 ;;
    -h | --help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

# The tools the project and its tests shell out to: "command package" (Debian names).
tools=(
  "pg_dump postgresql-client"    # backups; pg_restore and psql too
  "zstd zstd"                    # the runbooks decompress with it
  "age age"                      # the tests decrypt artifacts with the stock CLI
  "jq jq"                        # the runbooks read manifests with it
  "redis-server redis-server"    # Redis restores, drills, and the tests' private servers
  "redis-cli redis-tools"        # redis-cli --pipe (logical restore by hand)
  "openssl openssl"              # a throwaway TLS certificate for the rediss:// tests
  "strace strace"                # test_storage.py sees the directory fsyncs
  "chromium chromium"            # test_ui_browser.py drives it through Playwright (never `playwright install`)
  "aws awscli"                   # the S3 runbook, run verbatim by test_recovery.py
)
missing=()
for entry in "${tools[@]}"; do
  read -r cmd pkg <<<"$entry"
  command -v "$cmd" >/dev/null || missing+=("$pkg")
done
# test_pitr.py runs private PostgreSQL 15 clusters (initdb, pg_ctl, pg_receivewal) from Debian's paths.
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
if ! command -v python3 >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi

if ((check)); then
  if ((${#missing[@]})); then echo "missing: ${missing[*]}"; exit 1; fi
  echo "all system packages present"; exit 0
fi

if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo)
  else
    echo "setup.sh: missing Debian packages. Install them, then run ./setup.sh again:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "Installing: ${missing[*]}"
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${missing[@]}"
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup.sh: Python >= 3.11 is needed, python3 is $(python3 --version 2>&1)" >&2
  exit 1
}

# PostgreSQL on 127.0.0.1:5432 (the machine's, or a Debian cluster started here when it is down).
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  cluster=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$cluster" ] && command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$cluster" main start || true
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  fi
  pg_isready -h 127.0.0.1 -p 5432 -q || {
    echo "setup.sh: no PostgreSQL server answers on 127.0.0.1:5432. Start one (user postgres, trust or a" >&2
    echo "  password in the URLs), e.g. apt-get install postgresql && pg_ctlcluster <version> main start" >&2
    exit 1
  }
fi

# Redis on 127.0.0.1:6379: when none answers, one persisting as the strategy's redis.conf, data in deploy/local.
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  mkdir -p deploy/local/redis
  redis-server --bind 127.0.0.1 --port 6379 --dir "$PWD/deploy/local/redis" --daemonize yes \
    --logfile "$PWD/deploy/local/redis/redis.log" --appendonly yes --appendfsync everysec \
    --save "900 1 300 10 60 10000"
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.2; done
  echo "Started redis-server on 127.0.0.1:6379 (data and log in deploy/local/redis)"
fi

# The project in its own virtualenv (reused when it exists).
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'

if ((quickstart)); then
  exec .venv/bin/python -m cidadao_backup_dagster.quickstart
fi
echo "Set up. Run the tests with: .venv/bin/python -m pytest"
