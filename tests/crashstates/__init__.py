"""The crash-state checker (README, "Durability"): `recorder` records a
replica's file-system operations, `model` replays a prefix of them into
the states a power loss could leave, `judge` opens and checks each.
"""
