"""`berth explain`: ask a running Berth why a pod goes where it goes, and print a summary a person can
read (the winner, the best nodes with their score parts, the reasons of the others with their counts),
or the whole document with --json. The pod is named (Berth reads it from the API server, or in the demo
from the pods the verbs saw) or sent as a file (`-f pod.yaml`, `-f -` for stdin)."""

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from typing import Any, TextIO

from scheduler.model.quantity import format_units

TOP = 5


def add_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("pod", nargs="?", help="the pod's name (or use -f)")
    e.add_argument("--namespace", "-n", default="default")
    e.add_argument("--filename", "-f", metavar="FILE", help="send this Pod (YAML or JSON; - reads stdin) instead")
    e.add_argument("--url", default="http://127.0.0.1:8888", help="Berth's address (default %(default)s)")
    e.add_argument("--nodes", help="judge only these nodes (comma-separated)")
    e.add_argument("--json", action="store_true", help="print the whole explain document as JSON")
    e.add_argument(
        "--top", type=int, default=TOP, help="how many fitting nodes the summary lists (default %(default)s)"
    )
    e.add_argument("--cacert", metavar="FILE", help="CA that signed Berth's certificate (https URLs)")
    e.add_argument("--cert", metavar="FILE", help="client certificate, for a Berth that requires mTLS")
    e.add_argument("--key", metavar="FILE", help="private key of --cert")
    e.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for Berth (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BrokenPipeError:
        # `berth explain ... | head -1`: the reader left. Point stdout at /dev/null so the interpreter's
        # final flush does not fail again, and exit quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    if bool(args.pod) == bool(args.filename):
        return _fail("name a pod or send one with -f FILE (not both)")
    if bool(args.cert) != bool(args.key):
        return _fail("--cert and --key go together")
    try:
        request = _request(args)
        context = _tls(args)
    except (OSError, ssl.SSLError) as exc:
        return _fail(str(exc))
    try:
        with urllib.request.urlopen(request, timeout=args.timeout, context=context) as reply:
            doc = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return _fail(_http_error(args, exc))
    except (OSError, ValueError) as exc:  # URLError, refused, TLS failures, a reply that is not JSON
        return _fail(f"cannot reach {args.url}: {getattr(exc, 'reason', exc)}")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        summary(doc, sys.stdout, args.top)
    return 0


def _request(args: argparse.Namespace) -> urllib.request.Request:
    base = args.url.rstrip("/") + "/debug/explain"
    query = {"nodes": args.nodes} if args.nodes else {}
    if args.filename:
        body = sys.stdin.buffer.read() if args.filename == "-" else open(args.filename, "rb").read()  # noqa: SIM115
        url = base + ("?" + urllib.parse.urlencode(query) if query else "")
        return urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/yaml"})
    query = {"namespace": args.namespace, "pod": args.pod, **query}
    return urllib.request.Request(f"{base}?{urllib.parse.urlencode(query)}")


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.cacert or args.cert or args.url.startswith("https:")):
        return None
    ctx = ssl.create_default_context(cafile=args.cacert)
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)
    return ctx


def _http_error(args: argparse.Namespace, exc: urllib.error.HTTPError) -> str:
    raw = exc.read().decode(errors="replace")
    try:
        message = json.loads(raw).get("error") or raw
    except (ValueError, AttributeError):
        message = raw
    if exc.code == 404 and args.pod:
        return (
            f"{message}\n  Send the pod itself: berth explain --url {args.url} -f pod.yaml, or from a cluster:\n"
            f"  kubectl get pod -n {args.namespace} {args.pod} -o yaml | berth explain --url {args.url} -f -"
        )
    return f"{exc.code}: {message}"


def _quantity(resource: str, amount: object) -> str:
    """The request as a person wrote it (the document counts millicores and bytes)."""
    return format_units(resource, amount) if isinstance(amount, int) else str(amount)


def _fail(message: str) -> int:
    print(f"berth explain: {message}", file=sys.stderr)
    return 2


def summary(doc: dict[str, Any], out: TextIO, top: int = TOP) -> None:
    """The explain document as a person reads it: who, the verdict, the best nodes, the rest by reason."""
    nodes = doc.get("nodes") or []
    fits = [n for n in nodes if n.get("fits")]
    request = ", ".join(f"{k}={_quantity(k, v)}" for k, v in (doc.get("request") or {}).items())
    team = doc.get("team") or "(no team)"
    line = f"pod {doc.get('pod')}  team {team}{'  borrowing' if doc.get('borrowing') else ''}  request {request}"
    out.write(line + "\n")
    if doc.get("boundTo"):
        out.write(f"bound to {doc['boundTo']} (judged without its own hold)\n")
    if doc.get("quota"):
        out.write(f"quota: {doc['quota']}\n")
    if fits:
        best = fits[0]
        out.write(f"winner: {best['node']} (score {best.get('score')}); {len(fits)} of {len(nodes)} nodes fit\n")
        out.write(f"top {min(top, len(fits))}:\n")
        for n in fits[:top]:
            parts = "  ".join(f"{k}={v:g}" for k, v in (n.get("parts") or {}).items())
            tier = "  (fits, outside the best tier: filter fails it)" if n.get("reason") else ""
            out.write(f"  {n['node']}  score {n.get('score')}  raw {n.get('raw', '?')}  {parts}{tier}\n")
    else:
        out.write(f"winner: none; no node of {len(nodes)} fits\n")
    reasons = Counter(n.get("reason") or "?" for n in nodes if not n.get("fits"))
    if reasons:
        out.write(f"why the other {sum(reasons.values())} do not fit:\n")
        for reason, count in reasons.most_common():
            out.write(f"  {count:>6}  {reason}\n")
