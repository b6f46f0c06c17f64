"""docs/ray.md: its KubeRay manifest is valid YAML that runs a command this package accepts, on the pinned Ray,
with GPUs for the actors and the files where the pods can see them; its example manifest reads."""

import re
import shlex

import pytest
import yaml

from pnp.app.cli import _parser, flag
from pnp.batch.manifest import read_manifest
from pnp.evaluation.backends import parse_backend
from support.paths import ROOT

DOC = (ROOT / "docs" / "ray.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC, flags=re.S | re.M)


def ray_pin() -> str:
    [pin] = re.findall(r"^ray==(\S+)$", (ROOT / "requirements-scale.txt").read_text(), flags=re.M)
    return pin


@pytest.fixture(scope="module")
def job():
    [text] = blocks("yaml")
    return yaml.safe_load(text)


def pods(job):
    spec = job["spec"]["rayClusterSpec"]
    return [("head", spec["headGroupSpec"], 1)] + [
        (group["groupName"], group, group["replicas"]) for group in spec["workerGroupSpecs"]
    ]


def mounts(group) -> list[str]:
    """The folders a pod group mounts, each checked to come from a volume the pod declares."""
    pod = group["template"]["spec"]
    volumes = {volume["name"] for volume in pod.get("volumes", [])}
    found = []
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{mount['name']} is mounted but not declared"
            found.append(mount["mountPath"])
    return found


def test_the_rayjob_runs_pnp_batch_on_the_cluster_it_creates(job):
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["pnp", "batch"]
    args = _parser().parse_args(argv[1:])  # the flags exist, as written
    assert parse_backend(args.backend).address == "auto"
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray_pin()


def test_the_actors_get_gpus_and_the_files_are_where_the_pods_see_them(job):
    args = _parser().parse_args(shlex.split(job["spec"]["entrypoint"])[1:])
    gpu_slots = 0
    for name, group, replicas in pods(job):
        [container] = group["template"]["spec"]["containers"]
        gpus = {int(container["resources"][kind].get("nvidia.com/gpu", 0)) for kind in ("requests", "limits")}
        assert len(gpus) == 1, f"{name}: GPU requests and limits differ"
        gpu_slots += replicas * gpus.pop() // args.gpus_per_actor if name != "head" else 0
        paths = mounts(group)
        # The driver (head) reads the manifest and writes --out; the actors (workers) load the model.
        needed = [args.manifest, args.out] if name == "head" else [args.model]
        for path in needed:
            assert any(path.startswith(mount + "/") for mount in paths), f"{name} cannot see {path}"
    assert args.actors <= gpu_slots


def test_every_pod_runs_the_image_the_dockerfile_builds_on_the_pinned_ray(job):
    [dockerfile] = blocks("dockerfile")
    assert f"FROM rayproject/ray:{ray_pin()}-" in dockerfile and "requirements-scale.txt" in dockerfile
    images = {container["image"] for _, group, _ in pods(job) for container in group["template"]["spec"]["containers"]}
    assert len(images) == 1


def test_the_example_manifest_reads(tmp_path):
    [text] = blocks("csv")
    (tmp_path / "catalogue.csv").write_text(text)
    rows = read_manifest(tmp_path / "catalogue.csv", {}, flag)
    assert [row.error for row in rows] == [None, None]
    assert [len(row.job.config.prompt) for row in rows] == [2, 1]
