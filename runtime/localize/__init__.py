"""The onboard localization loop (`meanloc localize`): sources, estimate, filter, sinks."""
