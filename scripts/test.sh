#!/usr/bin/env bash
# The test suite: sets up .venv (scripts/env.sh) if needed, then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k parity`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
exec python -m pytest "$@"
