"""The safety methods, one sub-package each (in the way peft keeps one folder per tuner).

- ``safer_clip``: SafeR-CLIP (Yousaf et al., AAAI 2026). ``targets`` computes each unsafe
  caption's nearest safe caption under the frozen text encoder (cached beside the run),
  ``losses`` the relative, proximity and preservation terms, ``curriculum`` the easy-to-hard
  item schedule.
- ``hysac``: HySAC (Poppi et al., CVPR 2025). ``lorentz`` holds the hyperbolic operations,
  ``losses`` the contrastive and entailment terms with the learnable geometry (``HySACHead``),
  ``traversal`` the geodesic redirection of unsafe queries, ``calibration`` the threshold for
  classifying by distance from the origin.

Safe-CLIP (Poppi et al., ECCV 2024), the first method, still lives in ``safeclip_sdk.losses``
and ``safeclip_sdk.training``. Each package here is self-contained mathematics and data passes;
the trainer, the model folder and the exports do not use them yet (see docs/methods.md).
"""
