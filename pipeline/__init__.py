"""wilss-pipeline: weakly incremental learning for semantic segmentation, as a Snakemake pipeline.

Stages are run as ``python -m pipeline <stage> ...`` (see :mod:`pipeline.__main__`).
"""

__version__ = "0.1.0"
