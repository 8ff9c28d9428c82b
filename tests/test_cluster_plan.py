"""Cluster mode's flags against a cluster's resources, without starting Ray.

`plan_cluster` turns `--replicas`, `--min/--max-replicas`, `--replica-threads`,
`--replica-device` and `--replica-models` into Serve options; a local plan that cannot
fit is refused at start, naming the flags, instead of waiting forever for resources.
"""

from __future__ import annotations

import pytest

from modules.app.cmd_args import parse_args
from modules.cluster.start import ClusterError, plan_cluster


def plan(*flags: str, cpus: float = 2, gpus: float = 0, local: bool = True):
    return plan_cluster(parse_args(["--ray", *flags]), cpus=cpus, gpus=gpus, local=local)


def test_cpu_replicas_take_their_threads_and_must_fit_a_local_machine():
    two = plan("--replicas", "2", "--replica-threads", "1")
    assert (two.replicas, two.threads, two.gpus) == (2, 1, 0)
    assert two.serve_options() == {"num_replicas": 2}
    with pytest.raises(ClusterError, match=r"--replica-threads 2 need 4 CPUs; this machine "
                                           r"has 2"):
        plan("--replicas", "2", "--replica-threads", "2")
    joined = plan("--replicas", "8", cpus=2, local=False)  # nodes may join a remote cluster
    assert joined.replicas == 8


def test_gpu_nodes_get_one_gpu_per_replica_and_one_replica_per_gpu_by_default():
    four = plan(cpus=16, gpus=4)
    assert (four.replicas, four.gpus) == (4, 1)
    with pytest.raises(ClusterError, match="5 replicas need 5 GPUs"):
        plan("--replicas", "5", cpus=16, gpus=4)
    assert plan("--use-cpu", "all", cpus=16, gpus=4).gpus == 0
    assert plan("--replica-device", "cpu", cpus=16, gpus=4).gpus == 0
    later = plan("--replica-device", "cuda", "--replicas", "2", cpus=4, gpus=0, local=False)
    assert later.gpus == 1  # GPU workers may join the cluster after the ingress connects
    with pytest.raises(ClusterError, match="need 1 GPUs"):
        plan("--replica-device", "cuda", cpus=4, gpus=0)


def test_autoscaling_maps_to_serves_config():
    scaled = plan("--min-replicas", "1", "--max-replicas", "2")
    assert scaled.serve_options() == {"autoscaling_config": {
        "min_replicas": 1, "max_replicas": 2, "initial_replicas": 1,
        "target_ongoing_requests": 1}}
    with pytest.raises(ClusterError, match="--min-replicas needs --max-replicas"):
        plan("--min-replicas", "1")
    with pytest.raises(ClusterError, match="above --max-replicas"):
        plan("--min-replicas", "3", "--max-replicas", "2", cpus=8)
    with pytest.raises(ClusterError, match="outside"):
        plan("--replicas", "4", "--max-replicas", "2", cpus=8)
    with pytest.raises(ClusterError, match="need 3 CPUs"):
        plan("--max-replicas", "3")  # the ceiling must fit a local machine too


def test_bad_numbers_are_refused_by_the_parser():
    for flags in (["--replicas", "0"], ["--replica-threads", "-1"], ["--replica-models", "x"]):
        with pytest.raises(SystemExit):
            parse_args(["--ray", *flags])
