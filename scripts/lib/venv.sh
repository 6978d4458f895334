# shellcheck shell=bash
# Sourced by the scripts that make virtualenvs (scripts/bootstrap, scripts/bootstrap-dev and the
# installers that cache a tool in a venv of its own under ~/.cache/mbostream/). Two functions:
#   make_venv DIR [PYTHON]  makes the virtualenv DIR with the real interpreter behind PYTHON
#                           (default python3), never the link it was reached through; an existing
#                           DIR is mended in place (`venv --upgrade`), its packages kept
#   venv_runs DIR           succeeds when DIR's interpreter starts
# A venv records the path its interpreter was started by. .ci/run and scripts/rehearse-fresh-install
# start python3 through a link in a temporary folder of toolchain links (scripts/lib/clean-env.sh)
# and delete that folder when they end; a venv made through it, cached for later runs, then cannot
# start (stop 27's CI: cyclonedx-py "cannot execute: required file not found"). Made with the
# interpreter's real path, it works for as long as that Python is installed.

make_venv() {
  local dir="$1" python="${2:-python3}" real
  real="$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable))')" || return
  if [[ -f "$dir/pyvenv.cfg" ]]; then
    # `venv --upgrade` keeps interpreter links that exist, even dead ones: remove them first.
    find "$dir/bin" -maxdepth 1 -type l -name 'python*' -delete
    "$real" -m venv --upgrade "$dir"
  else
    "$real" -m venv "$dir"
  fi
}

venv_runs() {
  "$1/bin/python" -c '' 2>/dev/null
}
