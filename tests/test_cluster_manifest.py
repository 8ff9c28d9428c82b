"""The KubeRay manifest and the cluster-mode page say what Easel actually does.

`deploy/kuberay/easel.yaml` is only read by a Kubernetes cluster, which the tests do not
have, so its shape is checked here instead: a RayCluster with one GPU per worker pod,
every pod (head, workers, ingress) sees the model volume at the same path (replicas load
checkpoints by the paths the ingress names), the ingress joins the head's Service, and no
login is written in the file. `docs/cluster.md` must name only flags Easel's parser has.
No Ray is started.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from modules.app.cmd_args import build_parser

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "deploy" / "kuberay" / "easel.yaml"
CLUSTER_DOC = REPO / "docs" / "cluster.md"
HEAD_SERVICE = "easel-ray-head-svc:6379"  # KubeRay's name for RayCluster easel-ray's head


def documents() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text("utf-8")) if doc]


def one(kind: str) -> dict:
    found = [doc for doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"{kind}: {len(found)} documents"
    return found[0]


def pod_templates() -> dict[str, dict]:
    """Each pod template's spec, by where it comes from."""
    cluster, ingress = one("RayCluster")["spec"], one("Deployment")["spec"]
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"],
            "ingress": ingress["template"]["spec"]}
    for group in cluster["workerGroupSpecs"]:
        pods[f"worker {group['groupName']}"] = group["template"]["spec"]
    return pods


def model_mounts(pod: dict) -> set[tuple[str, str]]:
    """(claim, mountPath) of every PVC mount of the pod's containers."""
    claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"]
              for volume in pod.get("volumes", []) if "persistentVolumeClaim" in volume}
    return {(claims[mount["name"]], mount["mountPath"]) for container in pod["containers"]
            for mount in container.get("volumeMounts", []) if mount["name"] in claims}


def test_the_manifest_is_a_raycluster_with_one_gpu_per_worker_pod() -> None:
    cluster = one("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    groups = cluster["spec"]["workerGroupSpecs"]
    assert groups
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert resources["limits"]["nvidia.com/gpu"] == 1
            assert resources["requests"]["nvidia.com/gpu"] == 1


def test_every_pod_mounts_the_same_models_claim_at_the_same_path() -> None:
    claim = one("PersistentVolumeClaim")
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    mounts = {name: model_mounts(pod) for name, pod in pod_templates().items()}
    assert set(mounts) >= {"head", "ingress"} and len(mounts) >= 3
    expected = {(claim["metadata"]["name"], "/data")}
    assert all(found == expected for found in mounts.values()), mounts


def test_the_ingress_joins_the_head_service_and_uses_the_shared_data_dir() -> None:
    container = pod_templates()["ingress"]["containers"][0]
    text = " ".join([*container.get("command", []), *container.get("args", []),
                     *(str(env.get("value", "")) for env in container.get("env", []))])
    assert f"--ray-address {HEAD_SERVICE}" in text
    assert f"--address={HEAD_SERVICE}" in text  # the driver's own Ray node
    assert "--data-dir /data" in text and "--listen" in text
    assert one("RayCluster")["metadata"]["name"] + "-head-svc" == HEAD_SERVICE.split(":")[0]
    args_from = [env for env in container["env"] if env["name"] == "COMMANDLINE_ARGS"]
    assert args_from and "secretKeyRef" in args_from[0]["valueFrom"]


def test_no_password_is_written_in_the_manifest() -> None:
    text = MANIFEST.read_text("utf-8")
    assert not [doc for doc in documents() if doc["kind"] == "Secret"]
    # a login spelled out (u:p) after an auth flag; "$(openssl ...)" placeholders pass
    literal = re.compile(r"--(?:api|gradio)-auth[ =]['\"]?[^\s:'\"$]+:(?!\$\()[^\s'\"]+")
    assert not literal.findall(text)
    assert not re.search(r"(?i)password\s*[:=]\s*\S", text)
    assert not re.search(r"auth_token\s*[:=]\s*[\"']?\w", text)


def test_every_flag_in_the_cluster_page_exists() -> None:
    known = set(build_parser(add_help=False)._option_string_actions)
    flags = {flag for span in code_spans(CLUSTER_DOC.read_text("utf-8"))
             if not span.startswith(OTHER_TOOLS)
             for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span)}
    assert len(flags) > 5, f"docs/cluster.md names few flags: {sorted(flags)}"
    assert not flags - known, sorted(flags - known)


# Commands of other tools the page quotes (their flags are not Easel's).
OTHER_TOOLS = ("ray ", "kubectl ", "pip ", "helm ", "RAY_", "#")


def code_spans(markdown: str) -> list[str]:
    """Inline `code` spans, and each line of the fenced blocks."""
    spans, fenced = [], re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
    for block in fenced.findall(markdown):
        spans += [line.strip() for line in block.splitlines() if line.strip()]
    spans += re.findall(r"`([^`\n]+)`", fenced.sub("", markdown))
    return spans
