#!/usr/bin/env bash
# Start the console, a Celery worker with beat and the demo's simulated support traffic, on
# the embedded defaults unless DATABASE_URL / CELERY_BROKER_URL say otherwise. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
export DEBUG=${DEBUG:-1}
mkdir -p var
# The development settings this run uses, for manage.py commands typed in another terminal
# (manage.py reads var/dev.env only when the environment sets neither SECRET_KEY nor DEBUG).
umask_was=$(umask); umask 077
{
  echo "# Written by scripts/run.sh (make run): the development settings of the running demo."
  echo "DEBUG=$DEBUG"
  for name in DATABASE_URL CELERY_BROKER_URL CELERY_QUEUE_PREFIX CACHE_URL FEATUREOPS_VAR_DIR; do
    if [ -n "${!name:-}" ]; then echo "$name=${!name}"; fi
  done
} >var/dev.env
umask "$umask_was"

"$PY" manage.py migrate --no-input
"$PY" manage.py seed_demo
"$PY" manage.py seed_metrics   # the demo's metrics registry (telemetry)
# A rollout plan for support_assistant_profile in production, running at its first stage,
# with bake times of a minute or two so it can be walked through its stages during the demo.
"$PY" manage.py seed_rollout_demo
# Reminders due today (the demo has an overdue review and one due within a week) land in the
# inbox now; their emails go out through the worker below. Beat repeats the sweep hourly.
"$PY" manage.py send_reminders
# One signed audit checkpoint now (beat publishes hourly), so `manage.py verify_audit
# --checkpoints var/audit-checkpoints.jsonl` has one to check against from the start.
"$PY" manage.py publish_audit_checkpoint

# One worker per queue (featureops_site/queues.py), so a backlog on one never delays another,
# and beat in a process of its own (a beat embedded in a worker outlives a killed worker and
# doubles the schedule). Each is supervised: when one exits (a crash, a kill), it is started
# again two seconds later, and its log says so. Logs: var/celery-<queue>.log, var/celery-beat.log.
supervise() {  # supervise NAME COMMAND...
  local name=$1 child="" status
  shift
  trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; exit 0' TERM INT
  while true; do
    "$@" >>"var/celery-$name.log" 2>&1 &
    child=$!
    status=0
    wait "$child" || status=$?
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) supervisor: the $name worker exited (status $status); restarting in 2 s" \
      >>"var/celery-$name.log"
    sleep 2
  done
}
WORKER_PIDS=()
for queue in safety telemetry notifications reminders; do
  supervise "$queue" "$PY" -m celery -A featureops_site worker --loglevel=INFO --concurrency=1 \
    --queues="${CELERY_QUEUE_PREFIX:-}$queue" --hostname="$queue@%h" &
  WORKER_PIDS+=($!)
done
supervise beat "$PY" -m celery -A featureops_site beat --loglevel=INFO --schedule=var/celerybeat-schedule &
WORKER_PIDS+=($!)
# An imaginary support app: every few seconds it evaluates the demo flag for a batch of
# accounts and reports exposures and outcomes to the events API (waiting until the server is up).
"$PY" manage.py simulate_traffic --url "http://$HOST:$PORT" >var/traffic.log 2>&1 &
TRAFFIC_PID=$!
trap 'kill "${WORKER_PIDS[@]}" $TRAFFIC_PID 2>/dev/null || true; wait "${WORKER_PIDS[@]}" $TRAFFIC_PID 2>/dev/null || true' \
  EXIT INT TERM

echo
echo "FeatureOps Console: http://$HOST:$PORT/  (Celery workers for safety, telemetry, notifications and reminders," \
  "with beat; logs in var/celery-<queue>.log)"
echo "Django admin:       http://$HOST:$PORT/admin/  (log in as admin)"
echo "Rollout demo:       http://$HOST:$PORT/p/support-assistant/rollouts/  (traffic in var/traffic.log; to breach" \
  "its latency guardrail: $PY manage.py simulate_traffic --url http://$HOST:$PORT --regress-latency 2)"
echo
# uvicorn serves the whole site on one port: the console, OFREP and the events API (the WSGI
# app, in a thread pool) and the event streams (OFREP's and the live console's), reloading on
# code changes like runserver did.
"$PY" -m uvicorn featureops_site.asgi:application --host "$HOST" --port "$PORT" --reload \
  --reload-dir featureops_site --reload-dir flags --reload-dir rollouts --reload-dir audit --reload-dir api \
  --reload-dir telemetry --reload-dir notifications --reload-dir reminders --reload-dir webhooks \
  --timeout-graceful-shutdown 2
