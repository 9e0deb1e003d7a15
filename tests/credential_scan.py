"""A scan for literal credentials in text and in Kubernetes objects (keys, tokens, Secrets with data)."""

from __future__ import annotations

import re

_SECRET_PATTERNS = [
    ("AWS access key id", re.compile(r"(?<![A-Z0-9])(AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])")),
    ("aws_secret_access_key value", re.compile(r"(?i)aws_secret_access_key[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+]{20,}")),
    ("AWS secret key", re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")),
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("bearer/token value", re.compile(r"(?i)(auth_token|session_token|password)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+_\-]{16,}")),
]
# Environment variables that must never carry a literal value in a manifest.
_SENSITIVE_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN"}


def literal_credentials(text: str) -> list[str]:
    found = []
    for name, pattern in _SECRET_PATTERNS:
        for m in pattern.finditer(text):
            value = m.group(0)
            if name == "AWS secret key" and not (re.search(r"[A-Z]", value) and re.search(r"[a-z]", value) and re.search(r"\d", value)):
                continue  # a path or a word, not a 40-character key
            found.append(f"{name}: {value[:12]}...")
    return found


def env_literals(doc) -> list[str]:
    """Sensitive env entries with a literal value anywhere in a Kubernetes object; and Secrets with data."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            if node.get("kind") == "Secret" and (node.get("data") or node.get("stringData")):
                found.append(f"{path}: a Secret with data (create it with kubectl, never commit it)")
            for key, value in node.items():
                if key == "env" and isinstance(value, list):
                    for entry in value:
                        if isinstance(entry, dict) and entry.get("name") in _SENSITIVE_ENV and "value" in entry:
                            found.append(f"{path}.env: {entry['name']} has a literal value")
                if isinstance(key, str) and key.lower() in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
                    found.append(f"{path}.{key}: credentials in a config")
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(doc, "")
    return found



def _find_key(node, key):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            else:
                yield from _find_key(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _find_key(item, key)

