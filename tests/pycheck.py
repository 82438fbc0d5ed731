"""pycheck.py — the tally every Python test driver keeps: check() counts a condition and
names the failure, finish() prints the closing "NAME: N passed, M failed" line (the line
CI reads) and returns the exit status."""
import sys

passed = 0
failed = 0


def check(cond, what, stream=None):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what, file=stream or sys.stderr)
    return bool(cond)


def finish(name):
    print(f"{name}: {passed} passed, {failed} failed")
    return 1 if failed else 0
