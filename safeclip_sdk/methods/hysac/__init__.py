"""HySAC: safe and unsafe content in an entailment hierarchy in hyperbolic (Lorentz) space."""
