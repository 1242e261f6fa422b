#!/usr/bin/env bash
# Times the README's first command as a new user meets it: a fresh clone of this repository's
# HEAD, a brand-new virtual environment, an empty $LOWRES_CACHE, the three README lines verbatim
# (venv, pip install, `lowres sweep`), then a second sweep into a new folder with the models
# cached and a rerun of the first (every cell reused). Checks that results.csv is byte-identical
# to the committed docs/results/default/results.csv.
#
#     bash benchmarks/readme_job.sh [WORK_DIR]        (default /tmp/lowres_readme_job)
#
# Prints one line of timings (these are the README's "Run the main job" figures).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-/tmp/lowres_readme_job}"
rm -rf "$work"
git clone -q "$repo" "$work/clone"
cd "$work/clone"
export LOWRES_CACHE="$work/cache" MPLBACKEND=Agg
now() { date +%s.%N; }

start=$(now)
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
pip install -q torch==2.13.0 && pip install -q -e .
installed=$(now)
lowres sweep >"$work/sweep1.log" 2>&1
first=$(now)
lowres sweep --out runs/second >"$work/sweep2.log" 2>&1
second=$(now)
lowres sweep >"$work/sweep3.log" 2>&1
rerun=$(now)

python3 - "$start" "$installed" "$first" "$second" "$rerun" <<'EOF'
import sys

s, i, f, c, r = map(float, sys.argv[1:])


def mmss(x):
    return f"{int(x // 60)} min {round(x % 60)} s"


print(
    f"venv + pip {mmss(i - s)}, first `lowres sweep` {mmss(f - i)} (total {mmss(f - s)}); "
    f"second sweep, models cached, new folder: {c - f:.0f} s; rerun of the first: {r - c:.0f} s"
)
EOF
if cmp -s runs/default/results.csv "$repo/docs/results/default/results.csv"; then
    echo "results.csv is byte-identical to docs/results/default/results.csv"
else
    echo "results.csv DIFFERS from docs/results/default/results.csv" >&2
    exit 1
fi
