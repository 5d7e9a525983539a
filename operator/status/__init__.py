"""Child state → a custom resource's status, in the Kubernetes API conventions.

Pure functions (time is passed in): ``conditions`` is the core every kind shares (conditions,
timestamps, the refused and waiting states); each kind has its own module (``backtest``,
``session``, ``policy``) that turns what its children say into its status.
"""
