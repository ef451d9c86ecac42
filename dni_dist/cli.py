"""The command line over :class:`dni_dist.config.Config`: argparse options in ``--help`` groups,
``--config run.toml`` files, and one-line errors naming the option (and the file) at fault.

    values, sources = read(p, argv)        # what the user set: a TOML file, the command line over it
    cfg = build(p, values, sources, spec)  # + the spec's own settings -> a validated Config

Every Config field is an option ``--field-name`` and a TOML key (``field_name`` or
``field-name``). The testing aids (``--fail-at``, ``--fail-rank``, ``--fail-mode``) work but are
not shown by ``--help``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from .config import GROUPS, Config, ConfigError, did_you_mean, synth_option_names, unknown_key

FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    """An error is one line naming the option (exit code 2), not the whole usage block; an
    unknown option gets a "did you mean"."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n  ({self.prog} --help lists every option)\n")

    def parse_args(self, args=None, namespace=None):
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
            hints = "".join(did_you_mean(a.split("=")[0], known) for a in extra if a.startswith("--"))
            self.error(f"unrecognized arguments: {' '.join(extra)}{hints}")
        return ns


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"gate\": false}}' ({e})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"gate\": false}}'; got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """Command-line options generated from :class:`Config`: one ``--help`` group per concern,
    help text and defaults from the field metadata, the testing aids hidden."""
    p = _Parser(prog="python -m dni_dist.train", usage="%(prog)s [options]",
                description="Train a recurrent network with synthetic gradients (DNI) or truncated BPTT, in one "
                            "process, under torchrun, or on Ray.",
                argument_default=argparse.SUPPRESS)  # only what the user set reaches the namespace
    p.add_argument("--config", default="", help="a TOML file whose keys are these options (the command line "
                                                "overrides it)")
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    for name, f in FIELDS.items():
        meta = f.metadata
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        text = argparse.SUPPRESS if meta["hidden"] else f"{meta['help']} (default: {default!r})"
        if name == "synth_options":
            text += f" Keys: {', '.join(synth_option_names())}."
        where = groups.get(meta["group"], p)
        kind = str(f.type)
        if kind == "bool":
            where.add_argument(flag(name), action=argparse.BooleanOptionalAction, help=text)
        else:
            typ = {"int": int, "float": float, "str": str, "dict": _json_object}[kind]
            where.add_argument(flag(name), type=typ, help=text, choices=meta["choices"],
                               metavar="JSON" if kind == "dict" else None)
    return p


def load_toml(path: str) -> dict:
    """The keys of a ``--config`` TOML file by field name; an unknown key or a syntax error is one
    line naming the file (values are checked by Config, which names the file too: see build)."""
    import tomllib
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML: {e}") from None
    out = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            raise unknown_key(f"--config {path}", key, sorted(FIELDS))
        out[name] = value
    return out


def read(p: argparse.ArgumentParser, argv=None) -> tuple[argparse.Namespace, dict, dict]:
    """Parse ``argv``: a ``--config`` file first, the command line over it. Returns the namespace
    (the parser's own extra options too), the values the user set by field name, and where each
    came from (``"--config FILE"`` or ``"the command line"``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = p.parse_args(argv)
    values, sources = {}, {}
    if ns.config:
        try:
            values = load_toml(ns.config)
        except ConfigError as e:
            p.error(str(e))
        sources = {name: f"--config {ns.config}" for name in values}
    for name in FIELDS:
        if name in vars(ns):
            values[name] = getattr(ns, name)
            sources[name] = "the command line"
    return ns, values, sources


def build(p: argparse.ArgumentParser, values: dict, sources: dict, spec=None, notes: list | None = None) -> Config:
    """The validated, resolved Config of ``values``: the spec's own settings filled in (a user
    spec: ``spec``; None for a built-in task), then what the launcher decides (:func:`dni_dist.fit.resolve`).
    A bad value or a contradiction exits with one line naming the option and, for a file's value,
    the file. ``notes`` collects the one-line warnings (options the spec ignores or overrides)."""
    from .fit import resolve, spec_settings
    try:
        if spec is not None:
            values, found = spec_settings(spec, values)
            if notes is not None:
                notes.extend(found)
        return resolve(Config(**values))
    except ConfigError as e:
        p.error(explain(e, sources))


def explain(e: ConfigError, sources: dict) -> str:
    """``e`` as one line that names where the bad value came from: the flag typed, or the
    ``--config`` file and its key."""
    named = [o for o in e.options if o in FIELDS]
    message = str(e)
    if named and message.startswith(named[0] + ":"):  # "synth_options: unknown key ..."
        message = message[len(named[0]) + 2:]
    from_file = [o for o in named if sources.get(o, "").startswith("--config")]
    typed = [flag(o) for o in named if sources.get(o) == "the command line"]
    if from_file:
        where = f"{sources[from_file[0]]}: key {from_file[0]}"
    else:
        where = ", ".join(typed) or (flag(named[0]) if named else "")
    if not where or message.startswith(where):  # "--backend torch must be launched by torchrun ..."
        return message
    return f"{where}: {message}"
