"""The neural generator (AniPortraitGAN adapted to the contract): rig and skinning, networks,
renderer, checkpoints and training. See docs/neural_generator.md for the design contract."""
