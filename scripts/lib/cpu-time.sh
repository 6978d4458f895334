# shellcheck shell=bash
# Sourced by .ci/run and scripts/test, which report each background build's CPU time.
# cpu_seconds_of_children VAR: sets VAR to the CPU time (user + system, whole seconds) of this shell's
# children that have ended, their own children's included. `times` runs in this shell itself: in a
# pipe or in $(...) it would report a new process's children, none.
# shellcheck disable=SC2034 # `into` is a nameref: assigning it sets the caller's variable
cpu_seconds_of_children() {
  local -n into="$1"
  local file
  file="$(mktemp)"
  times >"$file"
  into="$(awk 'NR == 2 { split($1, u, "m"); split($2, s, "m"); printf "%d", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$file")"
  rm -f "$file"
}
