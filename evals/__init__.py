"""Evaluation suites, promotion gates, drift monitoring and Captum explanations (to come)."""
