"""Study templates: one TOML file per template, read through importlib.resources."""
