"""Kept for the callers of the old name: the protobuf-level client lives in ``rsign.client.raw``, one
implementation shared with the SDK, which must install without the server."""

from rsign.client.raw import HASH, SCHEME, RsignClient, channel

__all__ = ["HASH", "SCHEME", "RsignClient", "channel"]
