"""Development tooling, kept off the production path.

The benchmark, the Son La demo deployment and its client, the embedded SoftHSMv2 token and the
development CA. The last two are adapters: the composition root uses them only when no PKCS#11
module is configured (the embedded default); with a real HSM neither is built nor trusted.
"""
