"""Scaling out on a real multi-node Ray cluster (head + 2 workers, started by the test)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT, local_env

pytestmark = pytest.mark.timeout(600)  # the fixture starts a 5-node cluster on 2 cores


@pytest.fixture(scope="module")
def scenarios() -> dict[str, Any]:
    env = local_env()
    proc = subprocess.run([sys.executable, "-m", "tests.cluster_scenarios"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=480)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(lines[0][7:])
    return result


def test_spread_places_actors_on_several_nodes(scenarios: dict[str, Any]) -> None:
    assert scenarios["nodes"] == 3
    assert [x for x, _ in scenarios["spread"]] == list(range(12))
    # the actors are spread (rows may all go to the first actors to start)
    assert len(set(scenarios["spread_actors"])) >= 2


def test_custom_resources_pin_actors_to_the_nodes_that_have_them(
        scenarios: dict[str, Any]) -> None:
    assert [x for x, _ in scenarios["pinned"]] == list(range(6))
    assert {node for _, node in scenarios["pinned"]} == {scenarios["special_node"]}


def test_auto_chunk_size_from_a_memory_budget(scenarios: dict[str, Any]) -> None:
    # 4 CPUs; 1 + 2 + 2 GiB of memory on three nodes: one 1.5 GiB call fits on each
    # 2 GiB node, none on the 1 GiB head -> 2 at once
    assert scenarios["auto_size"] == 2
    assert [x for x, _ in scenarios["auto"]] == list(range(4))


def test_fractional_logical_gpus_are_assigned(scenarios: dict[str, Any]) -> None:
    rows = scenarios["gpus"]
    assert [x for x, _, _ in rows] == list(range(8))
    for _, ids, visible in rows:
        assert len(ids) == 1 and ids[0] in {"0", "1"}
        assert visible == ids[0]
    # 4 actors of 0.5 share 2 GPUs (rows may all go to the first actors to start)
    assert sorted(ids[0] for ids in scenarios["gpu_actors"]) == ["0", "0", "1", "1"]


def test_a_node_removed_mid_run_loses_nothing(scenarios: dict[str, Any]) -> None:
    survive = scenarios["survive"]
    assert [x for x, _ in survive] == list(range(30))  # all there, in order
    removed = scenarios["removed_node"]
    assert any(node == removed for _, node in survive)  # it did work before it went
    assert all(node != removed for _, node in survive[-5:])  # and none at the end
    assert scenarios["survive_deaths"] >= 1


def test_a_lost_node_lowers_concurrency_then_a_new_node_is_used(
        scenarios: dict[str, Any]) -> None:
    rows = scenarios["lost"]
    assert [x for x, _ in rows] == list(range(60))  # nothing lost, in order
    lost, added = scenarios["lost_node"], scenarios["added_node"]
    assert any(node == lost for _, node in rows)  # it worked before it went
    [warning] = scenarios["lost_warnings"]
    assert "1 of 2 actors for 'where' could not be placed" in warning
    assert "worker=1" in warning
    after = rows[scenarios["added_after"]:]
    assert any(node == added for _, node in after)  # capacity came back and was used
    assert all(node != lost for _, node in after)


def test_losing_every_node_that_can_hold_an_actor_fails_instead_of_waiting(
        scenarios: dict[str, Any]) -> None:
    error = scenarios["all_lost_error"]
    assert error.startswith("ActorPlacementError: no actor for 'where' could run"), error
    assert "placement_timeout=5" in error and "worker=1" in error
    assert 2 <= scenarios["all_lost_done"] < 200
