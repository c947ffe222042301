"""One memory limit -> budgets that fit in it (sniffer/memory_plan.py), and the cgroup limit found."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sniffer.config import Config
from sniffer.errors import ConfigError
from sniffer.memory_plan import (
    FANOUT_ENTRY_BYTES,
    FLOW_BYTES,
    HEADROOM,
    LEG_BYTES,
    MAIN_PROCESS_BYTES,
    MIN_USABLE_BYTES,
    SHARES,
    WORKER_BYTES,
    fit_config,
    flow_bytes,
    plan_budgets,
    ring_bytes,
)

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pcaps" / "kong-demo.pcap"
MiB = 1 << 20


@pytest.mark.parametrize(
    ("raw", "value"),
    [("512Mi", 512 * MiB), ("1G", 10**9), ("2gi", 2 << 30), ("300000000", 300_000_000), ("64MiB", 64 * MiB)],
)
def test_the_limit_takes_kubernetes_quantities(raw: str, value: int) -> None:
    assert Config.load(None, {"SNIFFER_MEMORY_LIMIT": raw}).memory_limit == value


@pytest.mark.parametrize("raw", ["lots", "12Q", "-5Mi", "1.5Gi", ""])
def test_a_bad_limit_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="SNIFFER_MEMORY_LIMIT"):
        Config.load(None, {"SNIFFER_MEMORY_LIMIT": raw})


SENDING = Config(application_id="app")


def _estimate(budgets: dict[str, int], config: Config, workers: int) -> int:
    """What the daemon may hold when every budget is full, by the plan's own unit costs: the planned
    values, else `config`'s."""
    b = {name: budgets.get(name, getattr(config, name) or config.max_buffer_bytes) for name in SHARES}
    return (
        MAIN_PROCESS_BYTES
        + workers * (WORKER_BYTES + ring_bytes(config))
        + b["max_flows"] * flow_bytes(config, workers)
        + b["max_buffer_bytes"]
        + b["max_http_buffer_bytes"]
        + b["max_pending_legs"] * LEG_BYTES
        + b["max_pending_leg_bytes"]
        + b["event_queue_bytes"]
    )


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize("limit_mib", [200, 256, 512, 1024, 8192])
def test_full_budgets_fit_under_the_limit_and_never_exceed_the_defaults(limit_mib: int, workers: int) -> None:
    limit = limit_mib * MiB
    fixed = MAIN_PROCESS_BYTES + workers * (WORKER_BYTES + ring_bytes(SENDING))
    too_little = limit * (1 - HEADROOM) - fixed < MIN_USABLE_BYTES
    if too_little:  # (4 workers' interpreters and rings in 200 or 256 MiB)
        with pytest.raises(ConfigError, match="too little"):
            plan_budgets(limit, workers, SENDING)
        return
    plan = plan_budgets(limit, workers, SENDING)
    defaults = Config()
    assert _estimate(plan.budgets, defaults, workers) <= limit * (1 - HEADROOM)
    for name, value in plan.budgets.items():
        default = getattr(defaults, name)
        assert 0 < value <= (default if default is not None else defaults.max_buffer_bytes)
    if limit_mib >= 8192:  # plenty of memory: the defaults themselves
        assert plan.budgets["max_flows"] == defaults.max_flows


def test_the_defaults_alone_do_not_fit_the_daemonsets_limit() -> None:
    # Why the plan exists: every budget at its default, full, is more than the 512 MiB the DaemonSet gives.
    defaults = Config()
    budgets = {
        "max_flows": defaults.max_flows,
        "max_buffer_bytes": defaults.max_buffer_bytes,
        "max_http_buffer_bytes": defaults.max_buffer_bytes,
        "max_pending_legs": defaults.max_pending_legs,
        "max_pending_leg_bytes": defaults.max_pending_leg_bytes,
        "event_queue_bytes": defaults.event_queue_bytes,
    }
    assert _estimate(budgets, defaults, 2) > 512 * MiB
    daemonset = (ROOT / "deploy" / "kubernetes" / "daemonset.yaml").read_text()
    assert "memory: 512Mi" in daemonset


def test_settings_given_explicitly_are_kept() -> None:
    env = {
        "SNIFFER_MEMORY_LIMIT": "256Mi",
        "SNIFFER_MAX_FLOWS": "99",
        "MOESIF_EVENT_QUEUE_BYTES": "12345678",
        "MOESIF_APPLICATION_ID": "app",
    }
    config = Config.load(None, env)
    given = Config.given(None, env)
    assert given == {"memory_limit", "max_flows", "event_queue_bytes", "application_id"}
    fitted, plan = fit_config(config, given, workers=1)
    assert plan is not None and plan.kept == ("max_flows", "event_queue_bytes")
    assert fitted.max_flows == 99 and fitted.event_queue_bytes == 12_345_678
    assert fitted.max_buffer_bytes == plan.budgets["max_buffer_bytes"] < config.max_buffer_bytes
    assert fitted.limits().max_http_buffer_bytes == plan.budgets["max_http_buffer_bytes"]
    assert "limit 256 MiB (SNIFFER_MEMORY_LIMIT)" in plan.describe() and "kept as set" in plan.describe()
    # What the kept budgets may hold is taken off first: full, everything still fits.
    assert _estimate(plan.budgets, fitted, 1) <= 256 * MiB * (1 - HEADROOM)


def test_explicit_budgets_larger_than_the_limit_are_a_clear_error() -> None:
    env = {"SNIFFER_MEMORY_LIMIT": "512Mi", "SNIFFER_MAX_FLOWS": "65536", "MOESIF_APPLICATION_ID": "app"}
    with pytest.raises(
        ConfigError, match=r"too little for 2 capture worker\(s\) and the budgets set \(max_flows\)"
    ):
        fit_config(Config.load(None, env), Config.given(None, env), workers=2)


def test_the_balanced_fanouts_map_is_counted_per_flow() -> None:
    balanced = plan_budgets(512 * MiB, 2, SENDING).budgets["max_flows"]
    hashed = plan_budgets(512 * MiB, 2, replace(SENDING, fanout="hash")).budgets["max_flows"]
    assert flow_bytes(SENDING, 2) == FLOW_BYTES + 2 * FANOUT_ENTRY_BYTES
    assert flow_bytes(SENDING, 1) == flow_bytes(replace(SENDING, fanout="hash"), 2) == FLOW_BYTES
    # the same bytes for flows that cost more each
    each = flow_bytes(SENDING, 2)
    assert hashed * FLOW_BYTES // each <= balanced <= (hashed + 1) * FLOW_BYTES // each < hashed


def test_tls_connections_share_the_flows_memory() -> None:
    # (hash fanout: the balanced one's map entries are per flow of SNIFFER_MAX_FLOWS, not per TLS flow)
    plain = plan_budgets(512 * MiB, 2, replace(SENDING, fanout="hash")).budgets
    tls = fit_config(
        Config.load(
            None, {"SNIFFER_TLS": "uprobe", "MOESIF_APPLICATION_ID": "app", "SNIFFER_FANOUT": "hash"}
        ),
        frozenset(),
        2,
        detect=lambda: (512 * MiB, "cg"),
    )
    assert tls[1] is not None and tls[0].max_flows == plain["max_flows"] // 2
    assert tls[0].event_queue_bytes == plain["event_queue_bytes"]


def test_without_an_application_id_the_queues_share_goes_to_the_others() -> None:
    sending = plan_budgets(512 * MiB, 2, SENDING).budgets
    writing = plan_budgets(512 * MiB, 2, Config()).budgets
    assert "event_queue_bytes" not in writing
    assert all(writing[name] > sending[name] for name in writing)
    assert _estimate({**writing, "event_queue_bytes": 0}, Config(), 2) <= 512 * MiB * (1 - HEADROOM)
    config = Config.load(None, {"MOESIF_APPLICATION_ID": "app"})
    fitted, _ = fit_config(config, frozenset(), 2, detect=lambda: (512 * MiB, "cg"))
    assert fitted.max_flows == sending["max_flows"]


def test_no_limit_or_off_leaves_every_default() -> None:
    config = Config.load(None, {})
    assert fit_config(config, frozenset(), 2, detect=lambda: None) == (config, None)
    off = Config.load(None, {"SNIFFER_MEMORY_LIMIT": "off"})
    assert fit_config(off, frozenset({"memory_limit"}), 2, detect=lambda: (1, "never read")) == (off, None)


def test_the_cgroup_limit_is_used_when_none_is_set() -> None:
    config = Config.load(None, {})
    found = (300 * MiB, "/sys/fs/cgroup/memory.max")
    fitted, plan = fit_config(config, frozenset(), 1, detect=lambda: found)
    assert plan is not None and plan.source == "/sys/fs/cgroup/memory.max"
    assert fitted.max_flows == plan.budgets["max_flows"] < config.max_flows


def test_too_little_memory_is_a_clear_error() -> None:
    with pytest.raises(
        ConfigError, match=r"SNIFFER_MEMORY_LIMIT: 100 MiB is too little for 2 capture worker"
    ):
        plan_budgets(100 * MiB, 2, SENDING)


def _replay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
    return subprocess.run(
        [sys.executable, "-m", "sniffer", "replay", str(DEMO), *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        cwd=ROOT,
        timeout=120,
    )


def test_replay_logs_the_plan_and_gives_the_same_events(tmp_path: Path) -> None:
    planned = _replay({"SNIFFER_MEMORY_LIMIT": "300Mi"}, "-o", str(tmp_path / "a.jsonl"))
    assert planned.returncode == 0, planned.stderr
    assert "memory plan: limit 300 MiB (SNIFFER_MEMORY_LIMIT), 1 worker(s): max_flows=" in planned.stderr
    plain = _replay({"SNIFFER_MEMORY_LIMIT": "off"}, "-o", str(tmp_path / "b.jsonl"))
    assert "memory plan" not in plain.stderr
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes() != b""


def test_replay_refuses_a_limit_too_small() -> None:
    p = _replay({"SNIFFER_MEMORY_LIMIT": "64Mi"})
    assert p.returncode == 2 and "SNIFFER_MEMORY_LIMIT: 64 MiB is too little" in p.stderr
    assert "Traceback" not in p.stderr


def test_each_worker_counts_its_rings_per_interface() -> None:
    assert ring_bytes(Config()) == 16 * MiB  # `any`: one socket
    assert ring_bytes(Config(interface="eth0,lo", ring_mb=64)) == 128 * MiB
    small = plan_budgets(512 * MiB, 2, SENDING)
    big = plan_budgets(512 * MiB, 2, Config(application_id="app", ring_mb=64))
    # 2 x 48 MiB more of rings: every budget shrinks (or stays at its default), none grows
    assert all(big.budgets[k] <= small.budgets[k] for k in small.budgets)
    assert big.budgets["max_flows"] < small.budgets["max_flows"]
    assert _estimate(big.budgets, Config(ring_mb=64), 2) <= 512 * MiB * (1 - HEADROOM)
    with pytest.raises(ConfigError, match="too little"):
        plan_budgets(512 * MiB, 2, Config(application_id="app", ring_mb=256))
