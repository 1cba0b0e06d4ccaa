"""A keyfile diff that never shows a secret: `--diff` must preview Wi-Fi changes
without printing the PSK (the task writing the keyfiles is no_log, so Ansible's own
diff is hidden)."""

import difflib
import re

_SECRET_KEYS = ("psk", "password", "wep-key0", "wep-key1", "wep-key2", "wep-key3")


def _secrets(text):
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in _SECRET_KEYS:
            found[key.strip()] = value
    return found


def _mask(text, own, other, side):
    """Replace each secret value; a changed one reads differently on each side."""
    pattern = re.compile(r"^(\s*)(" + "|".join(map(re.escape, _SECRET_KEYS)) + r")(\s*)=.*$")

    def repl(match):
        key = match.group(2)
        if key in other and other[key] != own[key]:
            note = f"<hidden, {side} value>"
        else:
            note = "<hidden>"
        return f"{match.group(1)}{key}{match.group(3)}={note}"

    return [pattern.sub(repl, line) for line in text.splitlines()]


def pi_wifi_masked_diff(after, before, path):
    """Unified diff of a keyfile from `before` (None: no file yet) to `after`, secrets masked."""
    before = before or ""
    old, new = _secrets(before), _secrets(after)
    diff = difflib.unified_diff(
        _mask(before, old, new, "old"),
        _mask(after, new, old, "new"),
        fromfile=f"{path} (now)" if before else "/dev/null",
        tofile=f"{path} (to be)",
        lineterm="",
    )
    return [line.rstrip() for line in diff]


class FilterModule:
    def filters(self):
        return {"pi_wifi_masked_diff": pi_wifi_masked_diff}
