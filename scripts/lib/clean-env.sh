# shellcheck shell=bash
# Sourced by scripts/rehearse-fresh-install and .ci/run: the environment of a new machine, for
# commands run under `env -i`. Three functions:
#   toolchain_links DIR   links the toolchains found on PATH (python3, cargo, rustc, rustdoc, go, node, npm,
#                         npx), and nothing else, into DIR (put DIR first on the clean PATH)
#   machine_settings ARR  appends to the array named ARR the NAME=VALUE of the machine's certificate
#                         and proxy settings that are set (how it reaches its registries)
#   toolchain_settings ARR  appends where the toolchains keep themselves and their caches, where set
#                         (CARGO_HOME, RUSTUP_HOME, GOPATH, GOMODCACHE, GOCACHE, XDG_CACHE_HOME):
#                         a rustup proxy without its RUSTUP_HOME finds no toolchain
# A tool installed by hand (a global maturin, grpcurl in ~/go/bin, anything in /usr/local) is not
# on a PATH made of DIR and the base system's folders, so a command that needs it fails there.

toolchain_links() {
  local dir="$1" name path python_exe
  mkdir -p "$dir"
  python_exe="$(python3 -c 'import sys; print(sys.executable)')" ||
    { echo "clean-env: toolchain 'python3' is not on PATH" >&2; return 127; }
  ln -sfn "$python_exe" "$dir/python3"
  for name in cargo rustc rustdoc go node npm npx; do
    path="$(command -v "$name" 2>/dev/null)" ||
      { echo "clean-env: toolchain '$name' is not on PATH" >&2; return 127; }
    ln -sfn "$path" "$dir/$name"
  done
}

# _pass_set ARR NAME...: appends NAME=VALUE to the array named ARR for each NAME that is set.
_pass_set() {
  local -n into="$1"
  shift
  local var
  for var in "$@"; do
    if [[ -n "${!var:-}" ]]; then into+=("$var=${!var}"); fi
  done
}

machine_settings() {
  _pass_set "$1" SSL_CERT_FILE SSL_CERT_DIR PIP_CERT REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS CURL_CA_BUNDLE \
    http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY
}

toolchain_settings() {
  _pass_set "$1" CARGO_HOME RUSTUP_HOME GOPATH GOMODCACHE GOCACHE XDG_CACHE_HOME
}
