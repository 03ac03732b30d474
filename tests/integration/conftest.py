import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster (2 CPUs, like the CI machine) shared by the integration tests."""
    import ray

    from pipelines.ray_env import init_ray
    from rlaif.config import RayConfig

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()
