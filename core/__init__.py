"""The stack's shared base: settings and paths, the database engine and migrations, the error
type and its HTTP envelope, command-line helpers, the plugin loader and model references.

Every other package builds on it; it imports none of them, and never torch.
"""
