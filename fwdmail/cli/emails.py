"""`fwdmail emails ...`: list, show, retry, delete outbound mail.

Handles stored submitted messages (any header, any text, the raw bytes): shown escaped by render, or
written as bytes only when stdout is not a terminal.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import TYPE_CHECKING

import click

from fwdmail import app
from fwdmail.app import emails as outbound
from fwdmail.app.shapes import email_json
from fwdmail.cli import render
from fwdmail.cli.common import State, confirm_or_abort, json_option, pass_state
from fwdmail.cli.render import console, emit_json, line

if TYPE_CHECKING:
    from fwdmail.app.preview import Preview


@click.group()
def emails() -> None:
    """Outbound (submitted) mail: the queue and what became of each message."""


def _when(value: dt.datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value else ""


def _print_list(rows: list[outbound.EmailRecord]) -> None:
    out = console()
    t = render.new_table("outbound mail (times UTC)",
                         ["id", "status", "domain", "from", "to", "subject", "created", "next attempt"])
    for e in rows:
        to = e.recipients[0].address if e.recipients else ""
        if len(e.recipients) > 1:
            to += f" (+{len(e.recipients) - 1})"
        nxt = _when(e.next_attempt_at) if outbound.is_pending(e) else ""
        render.add_row(t, (e.queue_id, e.status, e.domain, e.mail_from or "<>", to, e.subject,
                           _when(e.created_at), nxt))
    out.print(t)


def _print_email(e: outbound.EmailRecord, pv: Preview) -> None:
    out = console()
    facts = render.new_table(f"email {e.queue_id}", ["field", "value"])
    for name, value in (
        ("status", e.status), ("domain", e.domain), ("envelope from", e.mail_from or "<> (null sender)"),
        ("size", f"{e.size} bytes"), ("accepted (UTC)", _when(e.created_at)),
        ("send from (UTC)", _when(e.send_at)),
        ("next attempt (UTC)", _when(e.next_attempt_at) if outbound.is_pending(e) else ""),
        ("attempts", e.attempts), ("crashes", e.crash_count), ("final (UTC)", _when(e.final_at)),
        ("body", f"redacted {_when(e.redacted_at)} UTC" if e.redacted else "kept"),
    ):
        render.add_row(facts, (name, value))
    out.print(facts)
    rcpts = render.new_table("recipients", ["address", "status", "attempts", "last reply"])
    for r in e.recipients:
        reply = f"{r.code} {r.enhanced_code or ''} {r.text or ''}".strip() if r.code else ""
        render.add_row(rcpts, (r.address, r.status, r.attempts, reply))
    out.print(rcpts)
    headers = render.new_table("headers", ["name", "value"])
    for name, value in pv.headers:
        render.add_row(headers, (name, value))
    out.print(headers)
    if pv.redacted:
        out.print(render.text(f"The body of this message was redacted at {_when(e.redacted_at)} UTC; "
                              "only its headers, envelope and statuses are kept."))
        return
    title = f"text ({pv.text_type}{', rendered as text' if pv.text_type == 'text/html' else ''})"
    render.panel(title, pv.text or "(no text part)", out)
    for filename, ctype in pv.attachments:
        out.print(render.text(f"attachment: {filename or '(unnamed)'} ({ctype})"))


@emails.command("list")
@click.option("--status", help="Only messages in this state.",
              type=click.Choice(outbound.STATUSES))
@click.option("--domain", "domain_name", help="Only this domain.")
@json_option
@pass_state
def emails_list(state: State, status: str | None, domain_name: str | None, as_json: bool) -> None:
    """List outbound mail, newest first."""
    state.open()
    rows = outbound.list_emails(status, domain_name)
    if as_json:
        emit_json([email_json(e) for e in rows])
    else:
        _print_list(rows)


@emails.command("show")
@click.argument("email_id")
@click.option("--raw", is_flag=True, help="Print the stored message itself (headers only once redacted).")
@json_option
@pass_state
def emails_show(state: State, email_id: str, raw: bool, as_json: bool) -> None:
    """Show message EMAIL_ID: status per recipient, headers, and its text (HTML rendered as text)."""
    state.open()
    rec = outbound.get_email(email_id)
    if raw:
        message = outbound.raw_message(rec)
        if sys.stdout.isatty():  # bytes for a pipe or a file; for a terminal, its control bytes shown
            line(message.decode("utf-8", "replace").replace("\r\n", "\n"), multiline=True)
        else:
            click.get_binary_stream("stdout").write(message)
        if rec.redacted:
            line(f"(the body of {rec.queue_id} was redacted; headers only)", err=True)
        return
    from fwdmail.app.preview import preview  # the MIME and HTML parsers, only for this command

    pv = preview(rec)
    if as_json:
        emit_json({**email_json(rec), **pv.as_json()})
    else:
        _print_email(rec, pv)


@emails.command("retry")
@click.argument("email_id")
@pass_state
def emails_retry(state: State, email_id: str) -> None:
    """Try a queued, deferred or held message again now."""
    state.open()
    rec = outbound.retry_email(email_id, app.now())
    line(f"email {rec.queue_id} ({rec.status}) will be tried again now")


@emails.command("delete")
@click.argument("email_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def emails_delete(state: State, email_id: str, yes: bool) -> None:
    """Delete a message and its record (it is not sent if it has not been yet)."""
    state.open()
    rec = outbound.get_email(email_id)
    confirm_or_abort(yes, f"Delete email {rec.queue_id} ({rec.status})?")
    outbound.delete_email(rec.queue_id)
    line(f"email {rec.queue_id} deleted")
