#!/usr/bin/env bash
# The main job on its embedded default: a short sequential editing run on SmolLM2-135M with
# fastedit's built-in counterfactual requests, a before/after table, results and a plot.
# Extra arguments go to `fastedit demo` (see `fastedit demo --help`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/env.sh"
cd "$root"
exec fastedit demo "$@"
