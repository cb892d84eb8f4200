"""The child side of export.py: sandbox this process, load llmexport.py once, then run one
export per request from the parent, until it sends None or closes the connection.

argv: STUB_DIR LLMEXPORT_DIR RECORD SCRIPT FD (see export.Exporter). A request is llmexport's
argument list; the reply is ("ok", None) or ("error", "what failed"). llmexport's own output
(its spinner lines) goes to this process's stdout, the parent's log file.
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


def _export_once(main, script: str, args: list) -> tuple:
    """One llmexport run: its ``main`` with ``args`` as its command line."""
    # set for every run: llmexport's converter empties sys.argv
    sys.argv = [script, *args]
    try:
        main()
    except SystemExit as exc:  # argparse's refusal, or an exit of llmexport's own
        if exc.code not in (0, None):
            return "error", f"llmexport exited with {exc.code}"
    except Exception as exc:  # llmexport's failure, as one line; the child serves the next one
        text = str(exc).strip().splitlines()
        return "error", f"{type(exc).__name__}: {text[0] if text else ''}"
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return "ok", None


def serve() -> None:
    from multiprocessing.connection import Connection

    stub, tool, record, script, fd = sys.argv[1:]
    _sandbox(record)
    sys.path[:0] = [stub, tool]
    conn = Connection(int(fd))
    # llmexport.py loaded once as a module (not __main__, so its main() does not run): torch,
    # onnx, transformers and MNN are imported once for all the exports of this child
    with open(script, encoding="utf-8") as f:
        code = compile(f.read(), script, "exec")
    namespace = {"__name__": "parity_llmexport", "__file__": script, "__builtins__": __builtins__}
    exec(code, namespace)
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            return
        if args is None:
            return
        conn.send(_export_once(namespace["main"], script, list(args)))
