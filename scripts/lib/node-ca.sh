# shellcheck shell=bash
# Sourced by the scripts that run npm. Node.js trusts only its built-in roots, not the system's:
# where the machine reaches its registries through a CA of its own (added to the system bundle),
# npm fails with SELF_SIGNED_CERT_IN_CHAIN unless that bundle is named. A value already set wins.
if [[ -z "${NODE_EXTRA_CA_CERTS:-}" && -r /etc/ssl/certs/ca-certificates.crt ]]; then
  export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi
