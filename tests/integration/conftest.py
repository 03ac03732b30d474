import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster shared by the integration tests."""
    import ray

    from pipelines.ray_env import init_ray
    from rlaif.config import RayConfig

    init_ray(RayConfig())
    yield ray
    ray.shutdown()
