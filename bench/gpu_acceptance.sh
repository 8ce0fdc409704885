#!/usr/bin/env bash
# The GPU acceptance run as one command: `pytest -m gpu`, then bench/gpu_acceptance.py; one markdown table.
#
#   bash bench/gpu_acceptance.sh                    # report: bench/results/gpu_acceptance-<hostname>.md
#   bash bench/gpu_acceptance.sh report.md          # report to report.md
#   bash bench/gpu_acceptance.sh --dry-run          # print what would run, run nothing (also on a GPU)
#   bash bench/gpu_acceptance.sh out.md --no-compile --sections parity train   # extra gpu_acceptance.py options
#
# Budgeted for one H100: under 8 minutes in all (the plan printed first gives each section's estimate).
# Without a CUDA device it prints the plan and exits 0. Exit status: non-zero if any check failed.
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
fi
OUT="bench/results/gpu_acceptance-$(hostname).md"
if [[ $# -gt 0 && "$1" != -* ]]; then OUT=$1; shift; fi
DRY=0
for a in "$@"; do [[ "$a" == "--dry-run" ]] && DRY=1; done
PYTEST=("$PY" -m pytest -m gpu -q -p no:cacheprovider -o addopts=-ra tests)
SCRIPT=("$PY" bench/gpu_acceptance.py --out "$OUT")

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    DRY=1
    echo "no CUDA device (torch.cuda.is_available() is False): dry run, nothing is executed"
fi
if [[ $DRY == 1 ]]; then
    echo "would run: ${PYTEST[*]}   (~60 s; the gpu-marked tests: tests/test_gpu.py)"
    echo "would run: ${SCRIPT[*]} $*"
    echo "would write: $OUT"
    "${SCRIPT[@]}" --dry-run "$@"
    exit $?
fi

echo "== pytest -m gpu"
start=$(date +%s)
LOG=$(mktemp)
"${PYTEST[@]}" 2>&1 | tee "$LOG"
RC=${PIPESTATUS[0]}
SUMMARY=$(grep -E "(passed|failed|skipped|error|deselected|no tests ran)" "$LOG" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')
rm -f "$LOG"
echo "== bench/gpu_acceptance.py (pytest took $(( $(date +%s) - start )) s)"
# The script has its own timeouts (process groups 30-120 s); this one only guards against a hang elsewhere.
timeout "${GPU_ACCEPTANCE_TIMEOUT:-900}" "${SCRIPT[@]}" --pytest-summary "${SUMMARY:-no summary} ($(( $(date +%s) - start )) s)" \
    --pytest-rc "$RC" "$@"
SRC=$?
echo "total $(( $(date +%s) - start )) s; report: $OUT"
exit $SRC
