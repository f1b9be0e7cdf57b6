"""Data that ships with cemkit: deterministic synthetic volume-EM (:mod:`cemkit.data.synthetic`)."""
