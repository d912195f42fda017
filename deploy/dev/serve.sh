#!/usr/bin/env bash
# Run the platform on this machine, in the foreground, without Docker: apply the migrations, then
# start the web server (gunicorn) and a Celery worker with beat (the reconciler). Ctrl-C (or a
# SIGINT/SIGTERM to this script) stops them all; if one of them exits, the other is stopped too.
#
# Uses the same environment variables as every platform process (README: "Environment
# variables"): the embedded default (SQLite + a broker in var/) when DATABASE_URL and REDIS_URL
# are unset, PostgreSQL and Redis when they are set. Options, as environment variables:
#   BIND=127.0.0.1:8000   address gunicorn listens on
#   WEB_PROCESSES=1       gunicorn worker processes (each with 32 threads: long-polls hold one each)
#   CELERY_CONCURRENCY=2  Celery worker processes (aggregation runs there)
#   PY=.venv/bin/python   the Python interpreter
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PY:-.venv/bin/python}
BIND=${BIND:-127.0.0.1:8000}
WEB_PROCESSES=${WEB_PROCESSES:-1}
CELERY_CONCURRENCY=${CELERY_CONCURRENCY:-2}
export PYTHONPATH="$REPO/platform:$REPO${PYTHONPATH:+:$PYTHONPATH}" DJANGO_SETTINGS_MODULE=config.settings PYTHONUNBUFFERED=1

# Same default as config/settings.py (relative paths are taken from the repository root).
VAR_DIR=${FEDPLATFORM_VAR_DIR:-var}
[[ $VAR_DIR = /* ]] || VAR_DIR="$REPO/$VAR_DIR"
mkdir -p "$VAR_DIR"

echo "serve: applying migrations"
"$PY" manage.py migrate --noinput

web_pid="" worker_pid=""
stop() {
  trap - INT TERM
  echo "serve: stopping the web server and the Celery worker"
  # gunicorn: SIGINT is its quick shutdown (long-polls would hold a graceful one for 30 s);
  # Celery: SIGTERM is its warm shutdown (the task in progress finishes).
  [[ -n $web_pid ]] && kill -INT "$web_pid" 2>/dev/null || true
  [[ -n $worker_pid ]] && kill -TERM "$worker_pid" 2>/dev/null || true
  local deadline=$((SECONDS + 60))
  while kill -0 $web_pid $worker_pid 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      echo "serve: still running after 60 s, killing them"
      kill -KILL $web_pid $worker_pid 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  wait 2>/dev/null || true
  echo "serve: stopped"
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

"$PY" -m gunicorn config.wsgi:application --chdir "$REPO/platform" -b "$BIND" -w "$WEB_PROCESSES" \
  -k gthread --threads 32 --timeout 120 --graceful-timeout 10 --no-control-socket --access-logfile - &
web_pid=$!
"$PY" -m celery --workdir "$REPO/platform" -A config worker -B -l info --concurrency "$CELERY_CONCURRENCY" \
  -s "$VAR_DIR/celerybeat-schedule" &
worker_pid=$!
echo "serve: web server (pid $web_pid) on http://$BIND/, Celery worker with beat (pid $worker_pid); Ctrl-C stops both"

# Returns when either process exits, or at once when a trapped signal arrives (the trap runs).
status=0
wait -n "$web_pid" "$worker_pid" || status=$?
echo "serve: a process exited (status $status)"
stop
exit "$status"
