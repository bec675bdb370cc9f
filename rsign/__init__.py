"""rsign: centralized remote signing with keys kept in a PKCS#11 HSM."""

__version__ = "0.1.0"
