"""Authentication and sole control: PINs, TOTP, sessions and Signature Activation Data."""
