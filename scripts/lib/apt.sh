# shellcheck shell=bash
# apt_install PACKAGE...: installs, as root with apt-get, those of the packages not installed yet.
# One apt run of ours at a time: scripts/test runs scripts/bootstrap-dev's and scripts/install-docker's
# side by side (the latter in the background), and two apt-gets at once fail on dpkg's lock. Under
# the lock the packages are looked at again, so that the second finds the first's work done.
apt_install() {
  local lock="${XDG_CACHE_HOME:-$HOME/.cache}/mbostream/.apt.lock" missing=() package
  mkdir -p "$(dirname "$lock")"
  exec 8>"$lock"
  flock 8
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      -o DPkg::Lock::Timeout=600 "${missing[@]}" >/dev/null
  fi
  exec 8>&-
}
