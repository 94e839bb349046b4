"""meanloc: drone geo-localization without GNSS, built on the MEAN cross-view network."""

__version__ = "0.1.0"
