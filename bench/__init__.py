"""Benchmarks of fwdmail beside Postfix, the smtp-source/smtp-sink harness and a bare aiosmtpd floor."""
