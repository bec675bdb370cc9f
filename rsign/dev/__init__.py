"""Development tooling, kept off the production path.

The benchmark, the Son La demo deployment and its client, the embedded SoftHSMv2 token and the
development CA. The last two are adapters: the composition root uses them only when no PKCS#11
module is configured (the embedded default, ``EMBEDDED``, which the top of the program passes to
``rsign.runtime.config.load_settings``); with a real HSM neither is built nor trusted.
"""

from rsign.dev.embedded import EMBEDDED

__all__ = ["EMBEDDED"]
