"""Frame -> observation -> parameters: MediaPipe trackers and the solvers that turn landmarks into
expression weights and SMPL joint rotations. Trackers never import engines."""
