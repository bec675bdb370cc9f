"""Generated gRPC code for rsign.v1 (``make proto``); do not edit."""
