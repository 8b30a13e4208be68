"""Fixtures of the S3 backend tests: ``s3_server`` (session) and ``s3_store``."""

from tests.s3.server import S3Server, s3_server, s3_store

__all__ = ["S3Server", "s3_server", "s3_store"]
