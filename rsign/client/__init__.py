"""The rsign client SDK: log in, authorize with a one-time code, sign hashes or PDF files.

Installs without the server (``pip install rsign`` brings grpcio and protobuf; ``rsign[pdf]`` adds
pyHanko for PDF signing). Imports nothing of the server: only grpc, protobuf and ``rsign.v1``.

    from rsign.client import Client
    with Client("host:port", ca_file="ca.pem") as c:
        c.login(user_id, pin, otp)
        signed = c.sign_pdfs("SL-CTS-0001", ["a.pdf", "b.pdf"], otp=code, out_dir="signed/")
"""

from rsign.client.errors import BadServerAnswer, CodeAlreadyUsed, RsignError, count_down
from rsign.client.sdk import Authorization, Client, Credential, Session

__all__ = [
    "Authorization",
    "BadServerAnswer",
    "Client",
    "CodeAlreadyUsed",
    "Credential",
    "RsignError",
    "Session",
    "count_down",
]
