"""What the SDK check scripts of this folder share: the record of checks and failures, and the
one JSON object they print at the end. They run as `python tests/python/<script>.py`, so this
module is importable as `harness`.
"""

import json
import sys
import traceback

import dashscope

checks = {}
failures = []
_current = [""]


def expect(cond, what):
    """Record a failure of the running check unless `cond` holds; returns `cond`."""
    if not cond:
        failures.append(f"{_current[0]}: {what}")
    return cond


def check(fn):
    """Run one check and record its observations, or the exception it raised (a failure).

    A check either returns its observations, or takes one argument: a dict it fills, kept (with
    the exception's name) even when it raises. Returns `fn`, so it also works as a decorator.
    """
    name = fn.__name__
    _current[0] = name
    obs = {}
    try:
        if fn.__code__.co_argcount:
            fn(obs)
        else:
            obs = fn()
    except Exception as e:  # noqa: BLE001 - recorded as a failure
        failures.append(
            f"{name}: unexpected {type(e).__name__}: {e}\n" + traceback.format_exc(limit=4),
        )
        obs = {**(obs or {}), "exception": type(e).__name__}
    checks[name] = obs
    return fn


def error_of(e):
    """What an SDK exception says: its class, HTTP status and code."""
    return {
        "class": type(e).__name__,
        "status": getattr(e, "status_code", None),
        "code": getattr(e, "code", None),
    }


def raises(what, fn, *args, **kwargs):
    """`error_of` what `fn(*args, **kwargs)` raises; a failure (`what`) when it raises nothing."""
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the error is the observation
        return error_of(e)
    expect(False, what)
    return None


def report():
    """Print {"sdk_version", "checks", "failures"} as one JSON object and exit (1 on failure)."""
    print(
        json.dumps(
            {"sdk_version": dashscope.__version__, "checks": checks, "failures": failures},
            default=str,
            ensure_ascii=False,
        )
    )
    sys.exit(1 if failures else 0)
