# Sourced by the benchmark recipes: pick the interpreter the way ./runner does
# (PYTHON=... overrides, else the project's .venv, else python3).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
