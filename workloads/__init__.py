"""What runs in pods (and in ``kubequant run``): backtest, training, trading, data.

Workloads never import the operator or the Kubernetes client.
"""
