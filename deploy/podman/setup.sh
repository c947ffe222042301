#!/usr/bin/env bash
# Make rootful podman run containers on hosts like the CI machines (Debian 12, podman 4.3, a Firecracker
# VM whose root has every capability except CAP_SYS_RESOURCE, cgroups v1 with a hybrid v2 mount).
# Two failures are fixed with a containers.conf drop-in (measured, see platform.md section 4):
#   - "crun: setrlimit RLIMIT_NOFILE: Operation not permitted": without CAP_SYS_RESOURCE the runtime
#     cannot raise the container's limits to podman's defaults, so default_ulimits pins them at values
#     this process may set (podman caps its own NPROC at 32768 too);
#   - "crun: cgroups in hybrid mode not supported": runc is used instead of crun.
# Each fix is written only when its cause is present; on an ordinary host the script changes nothing.
# Idempotent. Usage: deploy/podman/setup.sh [--install]   (--install: apt-get the tools when missing)
set -euo pipefail

DROPIN_DIR=${CONTAINERS_CONF_D:-/etc/containers/containers.conf.d}
DROPIN="$DROPIN_DIR/50-moesif-sniffer.conf"

if [ "${1:-}" = "--install" ]; then
  need=""
  for tool in podman:podman runc:runc debootstrap:debootstrap; do
    command -v "${tool%%:*}" >/dev/null || need="$need ${tool#*:}"
  done
  if [ -n "$need" ]; then
    echo "setup: installing$need" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
  fi
fi

command -v podman >/dev/null || { echo "setup: podman is not installed" >&2; exit 1; }

# CAP_SYS_RESOURCE is bit 24 of the effective set.
capeff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
no_sys_resource=$(( (16#$capeff >> 24 & 1) == 0 ))
# Hybrid: a v1 hierarchy at /sys/fs/cgroup plus a cgroup2 mount beside it (crun refuses that layout).
hybrid=0
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] && grep -q ' cgroup2 ' /proc/mounts; then
  hybrid=1
fi

conf=""
if [ "$no_sys_resource" = 1 ]; then
  conf+=$'[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
fi
if [ "$hybrid" = 1 ]; then
  command -v runc >/dev/null || { echo "setup: cgroups are hybrid and runc is missing" >&2; exit 1; }
  conf+=$'[engine]\nruntime = "runc"\n'
fi

if [ -z "$conf" ]; then
  rm -f "$DROPIN"
  echo "setup: podman needs no fixes on this host" >&2
else
  mkdir -p "$DROPIN_DIR"
  if [ ! -f "$DROPIN" ] || [ "$(cat "$DROPIN")" != "${conf%$'\n'}" ]; then
    printf '%s' "$conf" >"$DROPIN"
  fi
  echo "setup: wrote $DROPIN (no_sys_resource=$no_sys_resource hybrid_cgroups=$hybrid)" >&2
fi
