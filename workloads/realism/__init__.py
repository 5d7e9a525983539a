"""Backtest ↔ live realism: ``kubequant parity`` and ``kubequant trading report`` (docs/guide/parity.md)."""
