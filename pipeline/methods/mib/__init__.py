"""MiB (Cermelli et al., CVPR 2020): unbiased cross-entropy and distillation, pixel labels."""

from pipeline.methods.registry import MethodSpec, declare

declare(
    MethodSpec(
        "mib", label="MiB", order=30, supervision="pixel", paper="Cermelli et al., CVPR 2020", equations="Eq. 4-7"
    ),
    package=__name__,
)
