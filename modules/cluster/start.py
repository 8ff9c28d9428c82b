"""Starting cluster mode, and stopping exactly what was started.

`begin_cluster(runtime)` makes this process the ingress: a `ClusterDispatcher` becomes
`Runtime.remote`, the ingress's model manager refuses to load checkpoints (the replicas
do), and a thread starts Ray: a new local instance, or the cluster at `--ray-address`.
It then sizes the deployment from the cluster's resources (`plan_cluster`: one GPU per
replica where there are GPUs, else `--replica-threads` CPU threads), creates the control
board and runs the replicas as a Serve application without Serve's own HTTP proxy (the
ingress is the only front door). Jobs submitted meanwhile wait for it; if it cannot
come up within `--ray-start-timeout`, they fail with 503 naming the reason.
`Cluster.stop` shuts down the local Ray instance it started, or, on a joined cluster,
deletes only its own Serve application.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from modules.cluster.dispatch import ClusterDispatcher

log = logging.getLogger("easel.cluster")

NAMESPACE = "easel"
APP_NAME = "easel"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "GRADIO_ANALYTICS_ENABLED": "False"}
# Jobs a replica holds: the running one and the next, which waits on the replica's own job
# queue. With only the running one, Serve's router learns that a replica is free only
# after the job's stream ends and then backs off between tries: measured here, a 1-replica
# cluster lost a third of the single process's throughput in those gaps.
REPLICA_QUEUE = 2
INGRESS_REFUSES = ("this server is a cluster ingress: checkpoints load on the replicas "
                   "(generate through txt2img / img2img; see docs/cluster.md)")


class ClusterError(ValueError):
    """Flags that ask for a deployment the cluster cannot hold; the message names them."""


@dataclass(frozen=True)
class ClusterPlan:
    """The deployment's shape: replica count or autoscaling range, and each one's share."""

    replicas: int
    min_replicas: int | None
    max_replicas: int | None
    threads: int  # CPU threads (Ray CPUs) per replica
    gpus: int  # GPUs per replica: 1 on GPU nodes, 0 on CPU nodes
    models_kept: int

    def serve_options(self) -> dict:
        """`serve.deployment` options: a fixed count, or Serve's autoscaling."""
        if self.max_replicas is None:
            return {"num_replicas": self.replicas}
        return {"autoscaling_config": {
            "min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
            "initial_replicas": self.replicas, "target_ongoing_requests": 1}}


def plan_cluster(args, *, cpus: float, gpus: float, local: bool) -> ClusterPlan:
    """Check the cluster flags against the cluster's resources (`local`: this machine is
    all of it, so a plan that cannot fit is an error now rather than a wait forever)."""
    use_gpus = replicas_use_gpus(args, gpus)
    threads = args.replica_threads or 1
    low, high = args.min_replicas, args.max_replicas
    if low is not None and high is None:
        raise ClusterError("--min-replicas needs --max-replicas (the autoscaling range)")
    if high is not None and (low or 1) > high:
        raise ClusterError(f"--min-replicas {low} is above --max-replicas {high}")
    default = max(int(gpus), 1) if use_gpus else 1
    replicas = args.replicas or (max(low or 1, min(default, high)) if high else default)
    if high is not None and not (low or 1) <= replicas <= high:
        raise ClusterError(f"--replicas {replicas} is outside --min-replicas {low or 1} .. "
                           f"--max-replicas {high}")
    most = high or replicas
    if local and use_gpus and most > gpus:  # (none at all: --replica-device cuda, no GPU)
        raise ClusterError(f"{most} replicas need {most} GPUs (one each); this machine has "
                           f"{int(gpus)}")
    if local and not use_gpus and most * threads > cpus:
        raise ClusterError(f"{most} replicas x --replica-threads {threads} need {most * threads}"
                           f" CPUs; this machine has {int(cpus)}")
    return ClusterPlan(replicas=replicas, min_replicas=(low or 1) if high else None,
                       max_replicas=high, threads=threads, gpus=1 if use_gpus else 0,
                       models_kept=args.replica_models)


def replicas_use_gpus(args, gpus: float) -> bool:
    """One GPU per replica: `--replica-device cuda`, or `auto` with GPUs in the cluster now
    (and not `--use-cpu all`)."""
    device = getattr(args, "replica_device", "auto")
    if device != "auto":
        return device == "cuda"
    return gpus >= 1 and "all" not in (getattr(args, "use_cpu", None) or [])


def replica_args(args) -> argparse.Namespace:
    """The ingress's flags as a replica uses them: extensions were installed here already."""
    return argparse.Namespace(**{**vars(args), "skip_install": True})


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


class Cluster:
    """The running cluster mode of one ingress (`begin_cluster`)."""

    def __init__(self, runtime, plan: ClusterPlan) -> None:
        self.runtime, self.plan = runtime, plan
        self.dispatcher = ClusterDispatcher(runtime)
        self.local = not runtime.args.ray_address
        self._thread = threading.Thread(target=self._start, name="easel-cluster-start",
                                        daemon=True)
        self._stopping = threading.Event()

    def _start(self) -> None:
        try:
            handle, board = deploy(self.runtime.args, self.plan)
        except Exception as error:
            reason = str(error) or type(error).__name__
            log.error("Cluster mode could not start: %s", reason)
            self.dispatcher.fail(reason)
            return
        log.info("Cluster mode: replicas are up")
        self.dispatcher.connect(handle, board)

    def stop(self) -> None:
        """Stop what this process started: the local Ray instance, or (joined) our app."""
        import ray
        from ray import serve

        self._stopping.set()
        if not ray.is_initialized():
            return
        try:
            if self.local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        except Exception as error:  # shutting down anyway
            log.warning("Stopping the Serve application: %s", error)
        finally:
            ray.shutdown()


def begin_cluster(runtime) -> Cluster:
    """Make `runtime` the ingress: join or start Ray here (the calling thread must outlive
    the server: Ray's local processes end with the thread that started them), check the
    flags against its resources (`ClusterError`), then deploy in the background."""
    plan = connect(runtime.args)
    cluster = Cluster(runtime, plan)
    runtime.remote = cluster.dispatcher
    runtime.models.loads_refused = INGRESS_REFUSES
    runtime.ready.set()
    cluster._thread.start()
    return cluster


def connect(args) -> ClusterPlan:
    """`ray.init` (a new local instance, or `--ray-address`) and the deployment's plan."""
    import ray

    env = {**OFFLINE_ENV, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(project_root()), os.environ.get("PYTHONPATH")]))}
    ray.init(address=args.ray_address or "local", namespace=NAMESPACE, include_dashboard=False,
             logging_level=logging.WARNING, runtime_env={"env_vars": env})
    resources = ray.cluster_resources()
    try:
        plan = plan_cluster(args, cpus=resources.get("CPU", 0), gpus=resources.get("GPU", 0),
                            local=not args.ray_address)
    except ClusterError:
        ray.shutdown()
        raise
    log.info("Cluster mode: %s", plan)
    return plan


def deploy(args, plan: ClusterPlan):
    """Run the replicas as a Serve application; (deployment handle, control board)."""
    from ray import serve

    from modules.cluster.board import board_actor
    from modules.cluster.replica import replica_class

    board = board_actor(NAMESPACE)
    serve.start(proxy_location="Disabled")  # the ingress is the only front door
    deployment = serve.deployment(
        replica_class(plan.models_kept), name="EaselReplica",
        max_ongoing_requests=REPLICA_QUEUE,
        ray_actor_options={"num_cpus": plan.threads, "num_gpus": plan.gpus},
        logging_config={"log_level": "WARNING"}, **plan.serve_options())
    # GPU replicas keep torch's own thread count unless --replica-threads says otherwise.
    threads = plan.threads if not plan.gpus or args.replica_threads else None
    app = deployment.bind(replica_args(args), namespace=NAMESPACE, threads=threads,
                          models_kept=plan.models_kept)
    return run_with_deadline(app, args.ray_start_timeout), board


def run_with_deadline(app, timeout_s: float):
    """`serve.run`, which waits for the replicas, bounded (Serve itself would wait forever
    for resources the cluster does not have)."""
    from ray import serve

    outcome: dict = {}

    def run() -> None:
        try:
            outcome["handle"] = serve.run(app, name=APP_NAME, route_prefix=None)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, name="easel-serve-run", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ClusterError(f"the replicas did not come up within {timeout_s:.0f} s "
                           "(--ray-start-timeout): are the CPUs / GPUs they ask for free?")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["handle"]
