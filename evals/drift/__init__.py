"""Drift monitoring: windows of the gateway's traffic log, per served version, compared with a
reference (an earlier traffic window, or data files) on several signals, each check stored."""
