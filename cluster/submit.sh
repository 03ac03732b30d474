#!/usr/bin/env bash
# Sends an rlaif command to any Ray cluster with `ray job submit`: this repository is the job's working dir (uploaded,
# without .venv/, runs/ and .git/), the cluster's nodes provide the stack (cluster/install.sh in their image or setup
# commands), and the run folder should be on storage every node sees (a mounted path, or s3://...).
#
#   RAY_ADDRESS=http://HEAD:8265 bash cluster/submit.sh run configs/gpu/qwen25vl7b_judge7b_8gpu.yaml --run s3://BUCKET/runs/q7b
#   RAY_ADDRESS=http://127.0.0.1:8265 bash cluster/submit.sh demo --run /tmp/runs/demo --set loop.rounds=1
#
# Options (environment): SUBMIT_NO_WAIT=1 returns after submission (follow with `ray job logs -f ID`);
# SUBMIT_PIP="pkg1 pkg2" adds pip packages to the job's runtime_env; RAY_AUTH_MODE defaults to token (Ray 2.60's
# CLI needs it to read ~/.ray/auth_token).
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,12p' "$0"; exit 2; }
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster dashboard, e.g. http://head:8265}"
here="$(cd "$(dirname "$0")/.." && pwd)"
ray_bin="${RAY_BIN:-$(command -v ray)}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

pip_json="[]"
if [ -n "${SUBMIT_PIP:-}" ]; then
    pip_json="[$(printf '"%s",' $SUBMIT_PIP | sed 's/,$//')]"
fi
runtime_env="{\"excludes\": [\".venv\", \"runs\", \".git\", \"*.egg-info\"], \"pip\": $pip_json, \"env_vars\": {\"PYTHONPATH\": \".\"}}"
[ "$pip_json" = "[]" ] && runtime_env="{\"excludes\": [\".venv\", \"runs\", \".git\", \"*.egg-info\"], \"env_vars\": {\"PYTHONPATH\": \".\"}}"

wait_flag=()
[ -n "${SUBMIT_NO_WAIT:-}" ] && wait_flag=(--no-wait)
exec "$ray_bin" job submit --address "$RAY_ADDRESS" --working-dir "$here" --runtime-env-json "$runtime_env" \
    "${wait_flag[@]}" -- python -m pipelines.apps.cli "$@"
