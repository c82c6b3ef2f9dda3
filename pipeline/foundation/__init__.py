"""Foundation models of FMWISS (Yu et al., CVPR 2023, Sec. 3.2): pre-training based co-segmentation.

* :mod:`~pipeline.foundation.maskclip`: open_clip ViT with MaskCLIP's last block, dense
  pixel-text scores ``M_init`` (Eq. 1-3);
* :mod:`~pipeline.foundation.attention`: timm self-supervised ViT (DINO / iBOT), seed points and
  seed-guided last-block attention (Eq. 4);
* :mod:`~pipeline.foundation.coseg`: the config section, the cache provenance and everything
  applied when the cache is read (binarisation, top-K%, fusion Eq. 5, label maps);
* :mod:`~pipeline.foundation.compute`: the ``coseg`` stage writing the HDF5 cache, its quality and
  a figure; :mod:`~pipeline.foundation.figure`: that figure.

Importing this package imports neither open_clip nor timm.
"""
