"""Maps family: transport maps and plans between continuous measures (SPOT, NOT) and the map tasks with
closed-form or certified optimal maps (Gaussian W2, convex maps, SPOT's pairs)."""
