"""The HTTP face beside gRPC (``rsign.api``): the Cloud Signature Consortium API and the passkey
pages, on Starlette/uvicorn. A transport only: every rule lives in the domain services it calls
through ``rsign.runtime.app.App``, which write the same audit records as for gRPC."""
