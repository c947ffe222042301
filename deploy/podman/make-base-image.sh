#!/usr/bin/env bash
# Make a local stand-in for `debian:bookworm-slim` when no registry can be reached (the CI machines):
# debootstrap a minbase Debian 12 root, slim it like the official image (no docs, man pages or
# locales installed later, no apt lists, apt caches cleaned after each install) and import it into
# podman under the official name, so the Dockerfile's `FROM debian:bookworm-slim` resolves locally
# and is never pulled. Python is NOT baked in: the Dockerfile installs it, as it must on the real image.
# The image carries the label org.moesif-sniffer.base=debootstrap so it is never mistaken for upstream's.
#
# Cached: does nothing when the image exists (pass --force to rebuild). Needs root and debootstrap.
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), BASE_IMAGE (default the official name).
set -euo pipefail

IMAGE=${BASE_IMAGE:-docker.io/library/debian:bookworm-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

if [ "${1:-}" != "--force" ] && podman image exists "$IMAGE"; then
  echo "base image: $IMAGE exists (cached)" >&2
  exit 0
fi
command -v debootstrap >/dev/null || { echo "base image: debootstrap is not installed" >&2; exit 1; }

work=$(mktemp -d /var/tmp/bookworm-slim.XXXXXX)
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

start=$(date +%s)
debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  exit 1
}

# What the official slim image configures (debuerreotype's "slimify" and docker apt settings).
cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
CFG
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::GzipIndexes "true"; Acquire::CompressionTypes::Order:: "gz";' >"$root/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'APT::AutoRemove::SuggestsImportant "false";' >"$root/etc/apt/apt.conf.d/docker-autoremove-suggests"
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<CFG
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
CFG
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
rm -rf "$root"/var/log/* "$root"/tmp/* "$root"/dev/*
: >"$root/etc/machine-id"

tar --numeric-owner -C "$root" -c . | podman import --quiet \
  --change 'CMD ["bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'LABEL org.moesif-sniffer.base=debootstrap' \
  - "$IMAGE" >/dev/null
echo "base image: $IMAGE made with debootstrap in $(( $(date +%s) - start )) s" >&2
