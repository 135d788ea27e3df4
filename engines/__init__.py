"""Parameters -> image: the engine protocol, the mesh engine and the neural engine's runtimes.
Engines never import trackers."""
