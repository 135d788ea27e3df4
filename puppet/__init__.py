"""puppet: a person on camera drives a generated talking portrait.

The package root imports nothing heavy: import the submodule you need
(`puppet.params`, `puppet.sources`, `puppet.pipeline`, ...).
"""

__version__ = "0.1.0"
