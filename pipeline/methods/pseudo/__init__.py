"""The offline WSSS baselines at step t (WILSON Sec. 4.2): hard pseudo-labels of a CAM network
(:mod:`pipeline.wsss`, the ``train-cam`` and ``pseudo-labels`` stages) learned with the old model's
targets (WILSON Eq. 7-8)."""

from pipeline.methods.registry import MethodSpec, declare

declare(
    MethodSpec(
        "cam",
        label="CAM",
        order=40,
        supervision="image",
        reads=("pseudo",),
        cam_network="cam",
        paper="Zhou et al., CVPR 2016; WILSON Sec. 4.2",
        equations="WILSON Eq. 7-8",
    ),
    MethodSpec(
        "vwe",
        label="VWE",
        order=50,
        supervision="image",
        reads=("pseudo",),
        cam_network="vwe",
        paper="Ru et al., IJCAI 2022",
        equations="Eq. 1-12; WILSON Eq. 7-8",
    ),
    MethodSpec(
        "iscam",
        label="IS-CAM",
        order=60,
        supervision="image",
        reads=("pseudo",),
        cam_network="iscam",
        paper="Jonnarth & Felsberg, 2022",
        equations="Eq. 1-8; WILSON Eq. 7-8",
    ),
    package=__name__,
)
