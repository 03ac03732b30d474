"""ray-rlaif core: configs, schemas, prompts, parsing, pair selection, losses, frame sampling.

Pure functions over Arrow tables and tensors. Nothing in this package imports Ray: the Ray actors live in
`actors/`, the Ray Data / Ray Train composition in `pipelines/`, the endpoint in `serve/`.
"""
__version__ = "0.1.0"
