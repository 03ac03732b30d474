"""A local S3 endpoint for tests (moto's server on a free port); pyarrow, Ray and boto3 find it through the AWS_*
environment it sets."""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def s3_server(bucket: str = "rlaif-test-runs"):
    """Starts the server, sets AWS_ENDPOINT_URL and fake credentials, creates `bucket`; yields its s3:// URI."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        boto3.client("s3").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}"
    finally:
        server.stop()
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
