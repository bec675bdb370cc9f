"""HSM access: the port (``ports``), the one PKCS#11 adapter, and the worker-process pool."""
