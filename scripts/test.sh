#!/usr/bin/env bash
# The test suite: sets up .venv (scripts/env.sh) if needed, then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k parity`.
#
# Without arguments it runs the whole suite, then the parity and drop-in tests a second time under
# the transformers 4.x line (.venv-tf4, requirements/pinned-tf4.txt). FASTEDIT_TF4=1 runs the given
# tests (default: that subset) under the 4.x line only.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tf4_tests=(tests/methods/test_parity.py tests/test_compat.py tests/test_easyedit.py tests/test_hparams.py)

if [ "${FASTEDIT_TF4:-0}" = "1" ]; then
  source "$root/scripts/env.sh"
  [ $# -gt 0 ] || set -- "${tf4_tests[@]}"
  exec python -m pytest "$@"
fi
if [ $# -gt 0 ]; then
  source "$root/scripts/env.sh"
  exec python -m pytest "$@"
fi

status=0
(source "$root/scripts/env.sh" && python -m pytest) || status=$?
echo "fastedit: the parity and drop-in tests again under transformers 4.x (.venv-tf4)" >&2
(export FASTEDIT_TF4=1 && source "$root/scripts/env.sh" && python -m pytest "${tf4_tests[@]}") || status=$?
exit "$status"
