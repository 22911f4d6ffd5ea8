#!/usr/bin/env bash
# Submit the nightly sweep to a Ray cluster through the Ray Jobs API, wait for it, and exit
# non-zero unless it SUCCEEDED, so the CI run fails with the job. Used by infra/ci/nightly-sweep.yml
# and by tests/test_cluster.py against a local `ray start --head`.
#
#   RAY_ADDRESS=http://ray-head:8265 infra/ci/submit-sweep.sh CONFIG RUN_ID [extra `logoscan scan` flags]
#
# CONFIG is read by the job's driver, on the cluster (the image holds jobs/configs/nightly.yaml at
# /app/jobs/configs/nightly.yaml). Re-submitting the same RUN_ID resumes that run's checkpoint.
# LOGOSCAN_PYTHON: the python on the cluster that has logoscan installed (default: python).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: RAY_ADDRESS=http://HEAD:8265 $0 CONFIG RUN_ID [scan flags]" >&2
  exit 2
fi
: "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray dashboard address, e.g. http://ray-head:8265}"
config=$1 run_id=$2
shift 2
python=${LOGOSCAN_PYTHON:-python}
submission="logoscan-${run_id}-$(date -u +%Y%m%dT%H%M%S)"
echo "submitting ${submission} to ${RAY_ADDRESS}" >&2
# Blocks and streams the job's logs, and exits 1 when the job fails. A lost log stream is not a
# failed job, though, so the job's own final status (asked through the Jobs SDK) decides.
ray job submit --address "$RAY_ADDRESS" --submission-id "$submission" --entrypoint-num-cpus 0 \
  -- "$python" -m logoscan scan --config "$config" --run-id "$run_id" "$@" || true
ray_python="$(dirname "$(command -v ray)")/python"
[ -x "$ray_python" ] || ray_python=python3
"$ray_python" - "$RAY_ADDRESS" "$submission" <<'PY'
import sys, time
from ray.job_submission import JobStatus, JobSubmissionClient
address, job = sys.argv[1:]
client = JobSubmissionClient(address)
deadline = time.time() + 300  # the log stream ended early: give the job 5 more minutes
while True:
    status = client.get_job_status(job)
    if status.is_terminal() or time.time() > deadline:
        break
    time.sleep(5)
info = client.get_job_info(job)
print(f"job {job}: {status.value}" + (f" ({info.message})" if status != JobStatus.SUCCEEDED and info.message else ""),
      file=sys.stderr)
sys.exit(0 if status == JobStatus.SUCCEEDED else 1)
PY
