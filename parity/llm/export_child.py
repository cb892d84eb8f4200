"""The child side of export.py: sandbox this process, then run llmexport.py as ``__main__``.

argv: STUB_DIR LLMEXPORT_DIR RECORD SCRIPT ARGS... (see export.export).
"""

from __future__ import annotations

import socket
import sys


def _sandbox(record: str) -> None:
    """Refuse network access and pip from here on, writing each refusal to ``record``. An audit
    hook cannot be removed, so nothing llmexport or MNN import later can undo it."""

    def refuse(what: str):
        with open(record, "a", encoding="utf-8") as f:
            f.write(what.replace("\n", " ") + "\n")
        raise PermissionError(f"parity's llmexport sandbox refuses {what}")

    def is_pip(command) -> bool:
        words = command.split() if isinstance(command, str) else [str(w) for w in (command or ())]
        return any(w.rsplit("/", 1)[-1] in ("pip", "pip3") or w == "pip" for w in words) or \
            any(a == "-m" and b == "pip" for a, b in zip(words, words[1:]))

    def hook(event: str, args) -> None:
        if event == "socket.connect":
            sock, address = args
            if getattr(sock, "family", None) != socket.AF_UNIX:
                refuse(f"network: connect {address!r}")
        elif event == "socket.getaddrinfo":
            refuse(f"network: name lookup {args[0]!r}")
        elif event == "os.system" and is_pip(args[0]):
            refuse(f"{args[0]}")
        elif event == "subprocess.Popen" and is_pip(args[1]):
            refuse(" ".join(map(str, args[1])))

    sys.addaudithook(hook)


def main() -> None:
    stub, tool, record, script, *args = sys.argv[1:]
    _sandbox(record)
    sys.path[:0] = [stub, tool]
    sys.argv = [script, *args]
    # not runpy.run_path: its exit restores sys.argv[0], and llmexport's converter empties
    # sys.argv (an IndexError after a finished export)
    with open(script, encoding="utf-8") as f:
        code = compile(f.read(), script, "exec")
    exec(code, {"__name__": "__main__", "__file__": script, "__builtins__": __builtins__})
