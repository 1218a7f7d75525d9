"""The consuming side: input channels and input gates."""
