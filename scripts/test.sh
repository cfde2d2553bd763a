#!/usr/bin/env bash
# The test-suite, after the same set-up as the main job. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# The tests also need Chromium: the Prefect UI check takes a real headless-browser screenshot.
SEC_EXTRA_APT=chromium bash scripts/setup.sh
source scripts/env.sh
# pytest exits 5 when no test ran: that is a failure here, and `set -e` keeps it one.
python -m pytest -q -p no:cacheprovider "$@"
