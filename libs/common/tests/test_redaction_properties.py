"""Property (hypothesis): no generated credential survives into a log line.

Each credential shape the redaction knows (`bastion_common.logging._CREDENTIALS`) is
generated from its own pattern, put in random text (between separators, as it would sit
in a message, a URL or a JSON value) under a key that says nothing, and logged through
the real structlog configuration; the line written must not contain it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion_common.logging import _CREDENTIALS, configure_logging, get_logger

_SEPARATORS = " \n\t:=,;\"'()[]{}<>/&?"
_filler = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@st.composite
def _credential(draw: st.DrawFn) -> tuple[str, str]:
    kind, pattern = draw(st.sampled_from(_CREDENTIALS))
    # Generate from the pattern itself, but with the separators a real one has around it:
    # the shapes with \b need a boundary, and the private key its END line.
    source = pattern.pattern.replace(r"\b", "").replace(r"|\Z", "")
    secret = draw(st.from_regex(source, fullmatch=True, alphabet=st.characters(codec="ascii")))
    return kind, secret


@st.composite
def _message(draw: st.DrawFn) -> tuple[str, str, str]:
    kind, secret = draw(_credential())
    before = draw(_filler) + draw(st.sampled_from(_SEPARATORS))
    after = draw(st.sampled_from(_SEPARATORS)) + draw(_filler)
    return kind, secret, before + secret + after


@settings(max_examples=400, deadline=None, database=None)
@given(message=_message(), how=st.sampled_from(["event", "field", "stdlib"]))
def test_no_generated_credential_reaches_a_log_line(
    message: tuple[str, str, str], how: str
) -> None:
    kind, secret, text = message
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            configure_logging("test", "INFO")  # binds the stream it writes to: `out`
            if how == "event":
                get_logger("props").info(text)
            elif how == "field":
                get_logger("props").info("props.value", note=text, nested={"list": [text]})
            else:
                logging.getLogger("props.stdlib").warning("%s", text)
    finally:
        configure_logging("test", "INFO")  # back to the real stdout for other tests
    line = out.getvalue()
    assert line, "nothing was logged"
    assert secret not in line, (kind, secret)
    assert json.loads(line.splitlines()[-1])["service"] == "test"
