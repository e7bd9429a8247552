"""l2o: a service that hosts learned optimizers (Andrychowicz et al., 2016)."""

__version__ = "0.1.0"
