"""Pure functions from a custom resource (and the operator's config) to Kubernetes objects.

No API calls, no clocks, no randomness: the same input always gives the same objects.
"""
