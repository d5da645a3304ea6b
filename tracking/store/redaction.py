"""One rule for every line that shows a URI: no secret in it, ever.

Storage and tracking URIs may carry a password (`postgresql://user:pass@host/db`, an HTTP
server's `https://user:token@host`, `?password=` in a query); run summaries, next steps,
error lines, log lines and a driver's own error text all go through `redact`, which works
on one URI or on any text holding some: `user:pass@` becomes `user:***@`, and the value of
a query parameter whose name says password, secret or token becomes `***`. The password
belongs in PGPASSWORD or a ~/.pgpass file (`PASSWORD_HINT`), never in the URL.
"""

from __future__ import annotations

import re

PASSWORD_HINT = ("give the password in PGPASSWORD or a ~/.pgpass file (libpq reads both), "
                 "not in the URL")
# scheme://user:password@ (the password runs to the last '@' before a '/' or a space)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*):[^\s/]*@")
# ?password=..., &sslpassword=..., ;token=... (any parameter whose name holds these words)
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;][^=&;\s#]*(?:pass(?:word|wd)?|secret|token)[^=&;\s#]*)=[^&;\s#'\"]*",
    re.IGNORECASE)
_AUTH_FAILED = ("password authentication failed", "no password supplied",
                "fe_sendauth", "authentication failed")


def redact(text: str) -> str:
    """`text` (a URI, or a line holding URIs) without passwords or tokens."""
    text = _USERINFO.sub(r"\g<head>:***@", text)
    return _SECRET_PARAM.sub(r"\g<key>=***", text)


def password_hint(error: str) -> str:
    """"; PASSWORD_HINT" when a database refused the credentials, else ""."""
    lowered = error.lower()
    return f"; {PASSWORD_HINT}" if any(s in lowered for s in _AUTH_FAILED) else ""
