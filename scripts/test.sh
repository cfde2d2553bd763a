#!/usr/bin/env bash
# The test-suite, after the same set-up as the main job. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests also need Chromium: the Prefect UI check takes a real headless-browser screenshot.
SEC_EXTRA_APT=chromium bash scripts/setup.sh
source scripts/env.sh
# pytest exits 5 when no test ran: that is a failure here, and `set -e` keeps it one.
# Test files run in parallel (pytest-xdist), one worker a core up to 4: the suite is a dozen tiny
# end-to-end pipelines, each mostly single-threaded process start-up. On the 2-core CI machine
# this took the suite from 27 min 21 s to 17 min 6 s. `--dist loadfile` keeps each file (and its
# module-scoped fixtures) on one worker. Pass `-n 0` to run serially.
workers=$(python -c "import os; print(min(4, len(os.sched_getaffinity(0))))")
# --durations: the slowest tests are listed at the end of every run (CI keeps the time in view).
python -m pytest -q -p no:cacheprovider -n "$workers" --dist loadfile --durations=25 "$@"
