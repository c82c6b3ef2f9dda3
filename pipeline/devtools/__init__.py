"""Developer tools that drive the pipeline from outside (they are not stages and no stage imports
them): :mod:`pipeline.devtools.faults`, the fault-injection harness (docs/reliability.md)."""
