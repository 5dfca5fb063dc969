"""Safe-CLIP (Poppi et al., ECCV 2024): each unsafe input onto the original embedding of its own
safe counterpart, safe inputs kept where they were."""
