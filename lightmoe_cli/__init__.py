"""lightmoe: profile Mixture-of-Experts models and prepare them for memory-efficient inference."""

__version__ = "0.1.0"
