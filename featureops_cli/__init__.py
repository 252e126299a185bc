"""`featureops`: the FeatureOps Console's command-line client, for CI (flags as code).

Standard library only, so a pipeline needs nothing but Python. See `featureops --help`."""

VERSION = "0.1.0"
