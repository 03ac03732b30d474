"""Starting or joining Ray with the environment every worker of a run needs."""
from __future__ import annotations

import logging
import os
import time

import ray

from rlaif.config import RayConfig

log = logging.getLogger(__name__)

# Ray 2.60's default Parquet reader (datasource V2) starts a pool of FooterReader actors (32) for every read, to list
# the files and read their footers: ~5 s a read on 2 cores however small the table, where the V1 reader lists in the
# driver (bench/ray_data_read.py). A round reads its tables many times, so the V1 reader it is, in the driver and
# every worker; a user's RAY_DATA_USE_DATASOURCE_V2=1 still chooses V2.
PARQUET_READER_V2 = os.environ.get("RAY_DATA_USE_DATASOURCE_V2", "0").lower() in ("1", "true")

# In-process vLLM engines (no EngineCore/worker child processes) start fastest and use least memory on CPU; a
# 1 GiB KV cache is plenty for the small models a CPU runs; "nobind" lets two engines share the cores. Ray Train's
# controller polls its workers every 2 s by default, and each state change of a fit waits for a poll: at 0.5 s an
# empty 2-worker fit takes 11 s instead of 14 s here (a round trains once, so this is per round).
WORKER_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
    "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
    "RAY_DATA_USE_DATASOURCE_V2": "1" if PARQUET_READER_V2 else "0",
}


OBJECT_STORE_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")

# A local Ray gets at least this many logical CPUs: engine actors hold their logical CPUs while idle between
# stages, and Ray Data's read/write tasks each ask for a whole one; the stages themselves run one after another.
MIN_LOCAL_CPUS = 4


def init_ray(cfg: RayConfig) -> None:
    """Join the cluster in `cfg.address` (or the one `ray job submit` runs us in), else start a local one."""
    from ray.data import DataContext

    # This driver's reads (WORKER_ENV: the workers'), also where Ray was started before us.
    DataContext.get_current().use_datasource_v2 = PARQUET_READER_V2
    if ray.is_initialized():
        return
    env = {k: v for k, v in WORKER_ENV.items()}
    if "RLAIF_CACHE" in os.environ:  # built test models are shared through the cache folder
        env["RLAIF_CACHE"] = os.environ["RLAIF_CACHE"]
    # Where the object store is (a custom endpoint such as MinIO's, the region) reaches every worker of an s3:// run
    # folder. Credentials are not forwarded (runtime_env is visible in the dashboard): nodes get them from their
    # instance role or their own environment; a local Ray's workers inherit this process's.
    env.update({k: v for k, v in os.environ.items() if k in OBJECT_STORE_ENV or k.startswith("AWS_ENDPOINT_URL")})
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    kwargs = {} if address else {"num_cpus": cfg.num_cpus or max(MIN_LOCAL_CPUS, os.cpu_count() or 1)}
    for attempt in (1, 2):
        try:
            ray.init(address=address, runtime_env={"env_vars": env}, logging_level=logging.WARNING, **kwargs)
            break
        except Exception as err:  # Ray raises a bare Exception when a local node is slow to start
            # Seen right after another local run exits on a loaded 2-core machine: its processes still hold the CPU.
            if address or attempt == 2 or "timed out during startup" not in str(err):
                raise
            log.warning("local Ray did not start in time (%s); retrying once", err)
            ray.shutdown()
            time.sleep(10)
    log.info("ray: %s", ray.cluster_resources())
