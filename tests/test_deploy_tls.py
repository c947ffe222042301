"""deploy/kubernetes/daemonset-tls.yaml: validates strictly, differs from daemonset.yaml only where HTTPS
capture needs it (hostPID, SYS_ADMIN + SYS_PTRACE, SNIFFER_TLS=uprobe, 8443), and the daemon accepts it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sniffer.config import Config

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate")

K8S = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def _ds(name: str) -> dict[str, Any]:
    (ds,) = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return ds


def _container(ds: dict[str, Any]) -> dict[str, Any]:
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("version", VERSIONS)
def test_tls_daemonset_validates_strictly(version: str) -> None:
    kubernetes_validate.validate(_ds("daemonset-tls.yaml"), version, strict=True)


def test_tls_daemonset_adds_only_what_uprobes_need() -> None:
    tls, plain = _ds("daemonset-tls.yaml"), _ds("daemonset.yaml")
    pod, plain_pod = tls["spec"]["template"]["spec"], plain["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and "hostPID" not in plain_pod
    assert pod["hostNetwork"] is True
    sec = _container(tls)["securityContext"]
    assert sec.get("privileged", False) is False and sec["capabilities"]["drop"] == ["ALL"]
    assert set(sec["capabilities"]["add"]) == {"NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}
    # everything else as in the plain DaemonSet
    strip = ("containers", "hostPID")
    assert {k: v for k, v in pod.items() if k not in strip} == {
        k: v for k, v in plain_pod.items() if k not in strip
    }
    for key in ("livenessProbe", "readinessProbe", "ports", "resources", "image"):
        assert _container(tls)[key] == _container(plain)[key]


def test_tls_daemonset_configuration_is_accepted_by_the_daemon() -> None:
    env = {e["name"]: e["value"] for e in _container(_ds("daemonset-tls.yaml"))["env"] if "value" in e}
    config = Config.load(None, env)
    assert config.tls == "uprobe" and config.tls_process == ("nginx",)
    assert 8443 in config.kong_ports and set(config.kong_ports) <= set(config.ports)
