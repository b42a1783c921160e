"""Pixel forensics: the 8x8 DCT, the coding grid, the quantisation lattice and IJG tables (no trained weights)."""
