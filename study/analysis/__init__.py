"""The analysis of a study's results, in pandas and matplotlib only (no torch, no Ray): the
results as one tidy table (`results`), the convergence analyses over it (`tables`), the figures
(`figures`) and the report (`report`)."""
