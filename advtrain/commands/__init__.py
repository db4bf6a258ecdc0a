"""The work behind each CLI command (the Typer app in advtrain.cli only parses and prints errors)."""
