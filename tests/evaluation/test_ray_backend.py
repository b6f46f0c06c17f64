"""The Ray backend's addresses and how it sizes its actors from a cluster's resources. Torch-free, no cluster."""

import pytest

from pnp.config import ConfigError
from pnp.evaluation.backends import parse_backend
from pnp.evaluation.ray_backend import actor_resources


@pytest.mark.parametrize(
    "text, address",
    [
        ("ray", None),
        ("ray:auto", "auto"),
        ("ray:10.0.0.5:6379", "10.0.0.5:6379"),
        ("ray:head.svc:6379", "head.svc:6379"),
    ],
)
def test_ray_backends_name_a_cluster(text, address):
    spec = parse_backend(text)
    assert (spec.kind, spec.address) == ("ray", address)


@pytest.mark.parametrize("text", ["ray:", "ray:head", "rays", "ray:head:port", "ray:ray://head:10001"])
def test_bad_ray_addresses_are_refused(text):
    with pytest.raises(ConfigError, match="Ray cluster's address|not a server URL"):
        parse_backend(text)


def test_ray_client_addresses_are_refused_with_what_works_instead():
    """Ray Data's driver needs a core worker, which a Ray Client connection does not have: the job would fail."""
    with pytest.raises(ConfigError) as caught:
        parse_backend("ray://head.svc:10001")
    assert "cannot run through Ray Client" in caught.value.reason
    assert "ray:auto" in caught.value.reason and "ray job submit" in caught.value.reason


@pytest.mark.parametrize(
    "cluster, given, sizes",
    [
        ((4, 32), (None, None, None), (4, 1.0, 1)),  # one actor per GPU, one CPU each
        ((4, 32), (None, 0.5, None), (8, 0.5, 1)),  # two actors share a GPU
        ((4, 32), (2, None, 8), (2, 1.0, 8)),
        ((0, 2), (None, None, None), (1, 0.0, 2)),  # CPUs only: one actor with every CPU
        ((0, 2), (2, None, None), (2, 0.0, 1)),  # the benchmark's 2 actors x 1 thread
        ((0, 3), (2, None, None), (2, 0.0, 1)),
        ((0, 2), (None, 1, None), (1, 1, 1)),  # GPUs asked of a CPU cluster: kept (check() warns)
    ],
)
def test_actors_take_a_gpu_each_where_the_cluster_has_gpus_and_none_on_cpus(cluster, given, sizes):
    assert actor_resources(*cluster, *given) == sizes
