# shellcheck shell=bash
# Sourced by the scripts that build test tools from the Go module proxy (scripts/install-*): every
# such build compiles without DWARF (-gcflags=all=-dwarf=false) and links without symbol tables
# (-ldflags=-s; a stack trace still names its functions), reproducibly (-trimpath, -buildvcs=false).
# No one debugs these binaries, and cold they are most of a new machine's CI time: on
# k8s.io/client-go/kubernetes from a cold GOCACHE, 125 CPU-s against 134. One set of flags for all,
# so that the standard library and the modules they share are compiled once. A command's own
# -ldflags (a version stamp) replaces the one here: those pass -s themselves. Flags a go command does
# not take (go mod tidy) it ignores.
# Once: a script sourcing this runs others that source it too.
_go_build_flags="-trimpath -buildvcs=false -gcflags=all=-dwarf=false -ldflags=-s"
if [[ " ${GOFLAGS:-} " != *" $_go_build_flags "* ]]; then
  export GOFLAGS="$_go_build_flags${GOFLAGS:+ $GOFLAGS}"
fi
