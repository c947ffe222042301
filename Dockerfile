# moesif-sniffer: the capture daemon (`moesif-sniffer run`) for a Kong node.
#
#   docker build -t moesif-sniffer .
#   docker run -d --net=host --cap-add NET_RAW -e MOESIF_APPLICATION_ID=... moesif-sniffer
#
# Privileges: the container starts as root on purpose (no USER line). Opening the AF_PACKET capture
# sockets needs CAP_NET_RAW, which only root's effective set receives from `--cap-add NET_RAW` (a
# non-root user would need file capabilities and privilege escalation instead). Right after the
# sockets and the metrics port are open, the daemon switches itself to SNIFFER_USER (default `nobody`)
# and drops every capability (sniffer/privileges.py); it refuses to run if any remain. The switch
# uses CAP_SETUID/CAP_SETGID, which docker and podman grant by default (a Kubernetes pod that drops
# ALL must add them back: deploy/kubernetes/daemonset.yaml).
#
# Two stages: the builder makes a virtualenv in /opt/venv with the hot modules compiled by mypyc
# (setup.py; gcc, the Python headers and mypy exist in the builder only); the final image has Debian's
# python3 and that venv, without pip, compilers or apt lists. `--build-arg SNIFFER_COMPILE=0` builds
# the pure-Python package instead (same behaviour, about 1.5x slower core: bench/core.py --compiled).

FROM debian:bookworm-slim AS builder
# Both stages carry this label, so a test machine can prune what its builds left untagged.
LABEL io.moesif-sniffer.stage=builder
ARG SNIFFER_COMPILE=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 python3-venv=3.11.2-1+b1 \
    && if [ "$SNIFFER_COMPILE" = 1 ]; then \
         apt-get install -y --no-install-recommends gcc=4:12.2.0-3 python3-dev=3.11.2-1+b1; fi \
    && rm -rf /var/lib/apt/lists/*
# /opt/build holds the build tools (setuptools, mypy); /opt/venv only what the daemon runs.
RUN python3 -m venv /opt/venv && python3 -m venv /opt/build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY reassembly ./reassembly
COPY sniffer ./sniffer
# Behind a TLS-intercepting proxy pip needs the host's CA bundle: pass it as a build secret,
#   --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt
# (it is mounted for this step only and never stored in a layer; without it pip uses its own bundle).
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && /opt/build/bin/pip install --no-cache-dir --disable-pip-version-check "setuptools==75.8.0" \
    && if [ "$SNIFFER_COMPILE" = 1 ]; then \
         /opt/build/bin/pip install --no-cache-dir --disable-pip-version-check "mypy==2.4.1"; fi \
    && SNIFFER_COMPILE=$SNIFFER_COMPILE /opt/build/bin/pip wheel --no-cache-dir --disable-pip-version-check \
       --no-build-isolation --no-deps --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check /wheels/*.whl \
    && /opt/venv/bin/pip uninstall --yes --disable-pip-version-check pip setuptools \
    && rm -rf /opt/venv/bin/Activate.ps1 /opt/venv/bin/activate*
# Fail the build if the compiled core was asked for and is not what the venv imports (from /: in /src
# the source tree would shadow the installed extension).
WORKDIR /
RUN [ "$SNIFFER_COMPILE" != 1 ] || /opt/venv/bin/python3 -c \
    "import reassembly.pipeline as p, sys; sys.exit(not p.__file__.endswith('.so'))"

FROM debian:bookworm-slim
LABEL io.moesif-sniffer.stage=daemon
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.11.2-1+b1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SNIFFER_INTERFACE=any
# The metrics endpoint (SNIFFER_METRICS_ADDR, default 127.0.0.1:9464) serves /healthz; with
# SNIFFER_METRICS_ADDR empty there is no endpoint and the check only needs the process to be running.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; a = os.environ.get('SNIFFER_METRICS_ADDR', '127.0.0.1:9464').strip(); a and u.urlopen('http://' + a.replace('0.0.0.0', '127.0.0.1').replace('[::]', '[::1]') + '/healthz', timeout=4)"]
ENTRYPOINT ["moesif-sniffer", "run"]
