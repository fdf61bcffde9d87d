"""SMTP replies in one place, the one error type that carries them, and how a reply is made safe to send.

An `SmtpError` is what a handler answers, what the delivery client reports per recipient, what the
queue stores and what a DSN describes. Untrusted input: reply text that may quote a client (`printable`
keeps its control characters and undecodable bytes off the wire).
"""

from __future__ import annotations

import re

_REPLY = re.compile(r"^([2-5]\d\d)[ -]?(?:([245]\.\d{1,3}\.\d{1,3})\s*)?(.*)$", re.DOTALL)


class SmtpError(Exception):
    """An SMTP reply that is not a success: code, enhanced code, text; anything unknown is temporary."""

    def __init__(self, code: int, enhanced_code: str, text: str) -> None:
        super().__init__(f"{code} {enhanced_code} {text}")
        self.code = code
        self.enhanced_code = enhanced_code
        self.text = text

    @property
    def permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def temporary(self) -> bool:
        return not self.permanent

    @property
    def reply(self) -> str:
        """The reply line as aiosmtpd handlers return it."""
        return f"{self.code} {self.enhanced_code} {self.text}".replace("\r", " ").replace("\n", " ")

    def with_text(self, text: str) -> SmtpError:
        return SmtpError(self.code, self.enhanced_code, text)

    @classmethod
    def parse(cls, reply: str, default_code: int = 451) -> SmtpError:
        """Read "550 5.1.1 text" (or a bare "text"); unparsable input becomes a temporary error."""
        m = _REPLY.match(reply.strip())
        if not m:
            return cls(default_code, f"{str(default_code)[0]}.0.0", reply.strip()[:500])
        code = int(m.group(1))
        enhanced = m.group(2) or f"{str(code)[0]}.0.0"
        return cls(code, enhanced, m.group(3).strip()[:500])

    @classmethod
    def unknown(cls, text: str = "Temporary failure, try again later") -> SmtpError:
        return cls(451, "4.3.0", text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SmtpError) and (self.code, self.enhanced_code, self.text) == (
            other.code, other.enhanced_code, other.text)

    def __hash__(self) -> int:
        return hash((self.code, self.enhanced_code, self.text))


# how every reply goes out

_NOT_PRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def printable(status: str) -> str:
    """A reply (one or more CRLF-separated lines) with control characters and undecodable bytes as "?"."""
    return "\r\n".join(_NOT_PRINTABLE.sub("?", line) for line in status.split("\r\n"))


_HAS_ENHANCED = re.compile(r"[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}(?: |\Z)")
# For the replies aiosmtpd words without an enhanced code: the code RFC 3463 gives their reply code.
_ENHANCED_FOR = {
    "421": "4.7.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0", "500": "5.5.2", "501": "5.5.4",
    "502": "5.5.1", "503": "5.5.1", "504": "5.5.4", "530": "5.7.0", "535": "5.7.8", "538": "5.7.11",
    "552": "5.3.4", "553": "5.1.3", "554": "5.7.0", "555": "5.5.4",
}


def with_enhanced_code(status: str) -> str:
    """A 2xx/4xx/5xx reply with an enhanced status code on every line (3xx replies carry none)."""
    if status[:1] not in ("2", "4", "5") or _HAS_ENHANCED.match(status):
        return status
    lines = []
    for line in status.split("\r\n"):
        if not _HAS_ENHANCED.match(line):
            code, sep, text = line[:3], line[3:4] or " ", line[4:]
            enhanced = _ENHANCED_FOR.get(code, code[0] + ".0.0")
            line = f"{code}{sep}{enhanced} {text}" if text else f"{code}{sep}{enhanced}"
        lines.append(line)
    return "\r\n".join(lines)


OK = "250 2.0.0 OK"
OK_SENDER = "250 2.1.0 Sender OK"
OK_RECIPIENT = "250 2.1.5 Recipient OK"
QUEUED = "250 2.0.0 Queued as {queue_id}"
FORWARDED = "250 2.0.0 Forwarded"
AUTH_OK = "235 2.7.0 Authentication successful"

RELAY_DENIED = SmtpError(550, "5.7.1", "Relaying denied")
NO_SUCH_USER = SmtpError(550, "5.1.1", "No such user here")
BAD_ADDRESS = SmtpError(553, "5.1.3", "Bad address syntax")
ALIAS_REJECTED = SmtpError(550, "5.7.1", "Recipient rejected")
ALIAS_TEMPFAIL = SmtpError(450, "4.2.1", "Mailbox temporarily unavailable, try again later")
TOO_MANY_RECIPIENTS = SmtpError(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = SmtpError(552, "5.3.4", "Message too big")
LOOP_DETECTED = SmtpError(554, "5.4.6", "Mail loop detected")
BAD_SRS = SmtpError(550, "5.1.1", "Invalid or expired bounce address")
SRS_SESSION_BLOCKED = SmtpError(451, "4.7.1", "Too many invalid bounce addresses in this session, try later")
SRS_DEFERRED = SmtpError(451, "4.7.1", "Too many invalid bounce addresses, bounces deferred; try again later")
BARE_NEWLINE = SmtpError(550, "5.5.2", "Bare CR or LF in message data is not allowed (RFC 5321 2.3.8)")
BAD_SENDER = SmtpError(553, "5.1.7", "Bad sender address syntax")
NEEDS_SMTPUTF8 = SmtpError(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
SENDER_NOT_ALLOWED = SmtpError(550, "5.7.1", "Sender address not allowed for this login")
AUTH_REQUIRED = SmtpError(530, "5.7.0", "Authentication required")
TLS_REQUIRED = SmtpError(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_FAILED = SmtpError(535, "5.7.8", "Authentication credentials invalid")
AUTH_RATE_LIMITED = SmtpError(421, "4.7.0", "Too many failed logins, try again later")
AUTH_BUSY = SmtpError(454, "4.7.0", "Temporary authentication failure, try again later")
AUTH_UNREADABLE = SmtpError(501, "5.5.2", "Cannot decode the AUTH response")
DATE_TOO_FAR = SmtpError(550, "5.7.1", "Date header too far in the future")
BAD_DATE = SmtpError(550, "5.6.0", "Date header is not a valid date")
FROM_NOT_ALLOWED = SmtpError(550, "5.7.1", "From header must be the one address you logged in as")
HEADER_MALFORMED = SmtpError(550, "5.6.0", "Malformed message header")
HEADER_NOT_UTF8 = SmtpError(550, "5.6.0", "Message header is not valid UTF-8")
STORE_UNAVAILABLE = SmtpError(451, "4.3.0", "Temporary local problem, try again later")
STORAGE_FULL = SmtpError(452, "4.3.1", "Insufficient system storage, try again later")
SHUTTING_DOWN = SmtpError(421, "4.3.2", "Service shutting down, try again later")
TRY_LATER = SmtpError(451, "4.3.0", "Temporary failure, try again later")
FORWARD_IN_PROGRESS = SmtpError(451, "4.3.0", "This message is being forwarded in another session, try later")

# inbound sender authentication and abuse controls
DMARC_REJECTED = SmtpError(550, "5.7.1", "Rejected by the DMARC policy of the sender's domain")
SPF_REJECTED = SmtpError(550, "5.7.1", "SPF check failed: this host may not send for the sender's domain")
AUTH_TEMPFAIL = SmtpError(451, "4.7.0", "Temporary DNS failure checking sender authentication, try later")
TOO_MANY_CONNECTIONS = SmtpError(421, "4.7.0", "Too many connections from your address, try again later")
RATE_LIMITED = SmtpError(451, "4.7.1", "Too many messages from your address, slow down and try later")
TOO_MANY_ERRORS = SmtpError(421, "4.7.0", "Too many errors, closing the connection")
COMMAND_TIMEOUT = SmtpError(421, "4.4.2", "Timeout, closing the connection")
DNSBL_LISTED = SmtpError(554, "5.7.1", "Service unavailable; client host blocked using {zone}")
NEED_MAIL = "503 5.5.1 Error: need MAIL command"

# aliases from DNS (issue 17)
DNS_ALIASES_TEMPFAIL = SmtpError(451, "4.4.3", "Cannot read the domain's aliases from DNS, try later")
DNS_ALIASES_UNVERIFIED = SmtpError(550, "5.7.1", "Recipient domain not verified for aliases from DNS")

# hostile input
ALIAS_LOOKUP_TIMEOUT = SmtpError(451, "4.3.0", "Recipient lookup took too long, try again later")
REGEX_BUDGET_SPENT = SmtpError(451, "4.7.1", "Too much recipient lookup work, try again later")
HEADER_TOO_BIG = SmtpError(552, "5.3.4", "Message header too big")
AUTH_LINE_TOO_LONG = SmtpError(500, "5.5.6", "Authentication exchange line is too long")
UNKNOWN_COMMAND = SmtpError(500, "5.5.2", "Error: command not recognized")
TOO_MANY_UNKNOWN = SmtpError(421, "4.7.0", "Too many unrecognized commands, closing the connection")

# listener limits
SESSIONS_FULL = SmtpError(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_JUNK = SmtpError(421, "4.7.0", "Too many commands that do nothing, closing the connection")
SESSION_TOO_LONG = SmtpError(421, "4.4.2", "Session too long, closing the connection")
LOGIN_TIMEOUT = SmtpError(421, "4.7.0", "No login in time, closing the connection")
TLS_ACTIVE = SmtpError(503, "5.5.1", "TLS already active")

# issue 17: sender lists and webhook destinations
SENDER_DENIED = SmtpError(550, "5.7.1", "Sender refused: the recipient's domain does not accept mail from it")
DNSBL_LISTED_RCPT = SmtpError(550, "5.7.1", "Client host blocked using {zone}")
WEBHOOK_REFUSED = SmtpError(550, "5.7.1", "Webhook destination refused: its host is not a public address")
WEBHOOK_TEMPFAIL = SmtpError(451, "4.4.1", "Webhook destination did not take the message, try again later")
WEBHOOK_REJECTED = SmtpError(550, "5.6.0", "Webhook destination refused the message")
WEBHOOK_TOO_BIG = SmtpError(552, "5.3.4", "Message too big for the webhook destination")
