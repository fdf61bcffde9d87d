"""Signatures per second: fwdmail's DKIM signing and ARC sealing beside `openssl speed rsa2048`.

All three run on one thread of this machine, one after the other, on a 2048-bit key.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
import subprocess
import time
from collections.abc import Callable

from fwdmail.auth import arc
from fwdmail.auth import dkim_sign as dkim
from fwdmail.runtime.keys import generate_dkim_key

from .clients import make_message
from .procs import BenchError

_OPENSSL_RSA2048 = re.compile(r"rsa\s+2048 bits\s+[\d.]+s\s+[\d.]+s\s+([\d.]+)\s+[\d.]+")


def openssl_sign_rate(seconds: int) -> float:
    """RSA-2048 private-key operations per second of user CPU time, as `openssl speed` reports them."""
    done = subprocess.run(["openssl", "speed", "-seconds", str(seconds), "rsa2048"],
                          capture_output=True, text=True, timeout=seconds * 10 + 60)
    found = _OPENSSL_RSA2048.search(done.stdout)
    if found is None:
        raise BenchError(f"cannot read sign/s from `openssl speed rsa2048`: {done.stdout[-500:]!r}")
    return float(found.group(1))


def _rate(operation: Callable[[], object], seconds: float, max_ops: int = 1_000_000) -> float:
    """Operations per CPU-second of this thread, measured for `seconds` of its CPU time.

    CPU time, as `openssl speed` divides by (its default is user CPU time, not wall time), so other load
    on the machine does not skew one side of the ratio. Bounded by wall time and count as well.
    """
    operation()  # warm caches (key parsing) outside the timing
    count, cpu_start, wall_deadline = 0, time.thread_time(), time.monotonic() + 10 * seconds
    while time.thread_time() - cpu_start < seconds and count < max_ops and time.monotonic() < wall_deadline:
        operation()
        count += 1
    return count / (time.thread_time() - cpu_start)


SIGNATURES_PER_SEAL = 2  # an ARC set signs twice: its ARC-Message-Signature and its ARC-Seal


def signing_rates(slices: int, seconds: int = 1, size: int = 4096) -> dict[str, float]:
    """Signatures per second of OpenSSL, fwdmail's DKIM `sign` and ARC `seal`, on a `size`-byte message
    (a seal makes SIGNATURES_PER_SEAL RSA signatures: its rate in seals per second is half the figure).

    The three take turns for `slices` slices of `seconds` each and the median slice counts, so a change
    in the machine's load during the measurement hits all three alike.
    """
    key = generate_dkim_key(2048)
    message = make_message("someone@sender.bench.test", "user@fwd.bench.test", size)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    results = (b"Authentication-Results: mx.bench.test; spf=pass smtp.mailfrom=sender.bench.test;"
               b" dkim=none; dmarc=pass header.from=sender.bench.test; arc=none\r\n")
    arc_input = results + message
    timestamp = int(time.time())

    def dkim_sign() -> object:
        return dkim.sign(message, "fwd.bench.test", "bench", key, now)

    def arc_seal() -> object:
        sealed = arc.seal(arc_input, "mx.bench.test", "fwd.bench.test", "bench", key, timestamp)
        if sealed is arc_input:
            raise BenchError("arc.seal returned the message unsealed")
        return sealed

    made = arc_seal()
    assert isinstance(made, bytes)
    signed = made[:len(made) - len(arc_input)]
    if not (signed.startswith(b"ARC-Seal:") and b"\r\nARC-Message-Signature:" in signed):
        raise BenchError("arc.seal did not add one ARC-Seal and one ARC-Message-Signature")

    rates: dict[str, list[float]] = {"openssl": [], "dkim_sign": [], "arc_seal": []}
    for _ in range(slices):
        rates["openssl"].append(openssl_sign_rate(seconds))
        rates["dkim_sign"].append(_rate(dkim_sign, seconds))
        rates["arc_seal"].append(_rate(arc_seal, seconds) * SIGNATURES_PER_SEAL)
    return {name: statistics.median(values) for name, values in rates.items()}
