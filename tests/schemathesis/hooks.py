"""Hooks for the schemathesis run of `tests/it/openapi.rs` (`POST /transactions`).

Two rules of the request are not a request's alone, and the document cannot state them in
JSON Schema (its description does): an `Idempotency-Key` reused with another request, and
a `step_id` used twice in one transaction, are refused with 422 by design. Hypothesis draws
short strings, so generated keys and step ids repeat; these hooks make a *valid* repeated
one unique again (still valid by its schema) and leave every invalid value as it was, so
what the run checks is the document against the service, request by request.
"""

import re
import uuid

import schemathesis

KEY = re.compile(r"^[!-~]{1,255}$")
STEP_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@schemathesis.hook
def before_call(context, case, **kwargs):
    headers = case.headers or {}
    for name in list(headers):
        value = headers[name]
        if name.lower() == "idempotency-key" and isinstance(value, str) and KEY.match(value):
            headers[name] = str(uuid.uuid4()) + value[:219]
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("steps"), list):
        seen = set()
        for i, step in enumerate(body["steps"]):
            if not isinstance(step, dict):
                continue
            step_id = step.get("step_id")
            if not isinstance(step_id, str) or not STEP_ID.match(step_id):
                continue
            if step_id in seen:
                step["step_id"] = f"{step_id[:56]}.u{i}"
            seen.add(step["step_id"])
