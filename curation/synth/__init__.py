"""synthetic and synthetic_mixed: teachers, synthesis methods, judges and verification, the sandbox for
generated code, the generation cache, and the mix of real and synthetic rows under a cap."""
