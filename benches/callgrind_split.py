#!/usr/bin/env python3
"""Self cost (Ir) of a callgrind dump, per function and per category.

Usage: callgrind_split.py DUMP [REQUESTS] [--top N]

callgrind_annotate 3.19 attributes the self cost of inlined code to
the wrong entry for these Rust binaries, so this reads the file itself:
self cost = cost lines under `fn=` that do not follow a `calls=` line;
inclusive = self + the cost lines that follow `calls=` (recursion is
counted more than once, as in callgrind_annotate). Categories are
assigned from the function and object names (first match wins).
"""
import re
import sys
from collections import defaultdict

CATEGORIES = [
    ("allocator", r"malloc|free|realloc|calloc|__rust_alloc|__rust_dealloc|__rust_realloc|__rdl_|_int_|tcache|arena|sysmalloc|alloc::raw_vec|RawVec"),
    ("memcpy/memset", r"memcpy|memmove|memset|memcmp|bcmp"),
    ("syscall wrappers (libc)", r"^(recv|send|recvfrom|sendto|recvmmsg|sendmmsg|epoll_wait|__libc_|syscall|futex|__GI___|writev|readv|read|write)\b|pthread_cond|__futex|__lll_"),
    ("crypto (OpenSSL)", r"libcrypto|libssl|EVP_|CRYPTO_|aes|ossl_|gcm|ccm|^openssl::|openssl_sys"),
    ("dtls (coap-dtls)", r"coap_dtls::"),
    ("codec (coap-codec)", r"coap_codec::"),
    ("endpoint (coap-endpoint)", r"coap_endpoint::"),
    ("broker/gateway (emqx-coap)", r"emqx_coap::"),
    ("adapter (hono-coap)", r"hono_coap::"),
    ("AMQP client (lapin/amq-protocol)", r"lapin|amq_protocol|pinky_swear|async_global_executor|async_io|polling::"),
    ("hashing", r"hash|Hash|sip|SipHasher|foldhash|ahash"),
    ("tokio runtime (tasks, channels, timers, I/O driver)", r"tokio::|mio::"),
    ("binaries (coap-emqx-gateway, coap-hono-adapter main/handler)", r"coap_emqx_gateway::|coap_hono_adapter::"),
    ("libcoap", r"libcoap|^coap_[a-z0-9_]+$"),
    ("tracing", r"tracing"),
]
COMPILED = [(name, re.compile(rx)) for name, rx in CATEGORIES]


def parse(path):
    names = {"fn": {}, "ob": {}, "fl": {}}
    self_cost = defaultdict(int)
    incl_calls = defaultdict(int)
    obj_of = {}
    cur_fn = None
    cur_ob = ""
    after_calls = False
    total = 0
    comp = re.compile(r"^(fn|cfn|ob|cob|fl|fi|fe|cfi|cfl)=(?:\((\d+)\))?\s*(.*)$")
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        c = line[0]
        if c.isdigit() or c in "+-*":
            parts = line.split()
            if len(parts) < 2:
                continue
            try:
                cost = int(parts[1])
            except ValueError:
                continue
            if after_calls:
                incl_calls[cur_fn] += cost
                after_calls = False
            else:
                self_cost[cur_fn] += cost
                total += cost
            continue
        if line.startswith("calls="):
            after_calls = True
            continue
        m = comp.match(line)
        if not m:
            continue
        kind, ident, name = m.groups()
        table = {"fn": "fn", "cfn": "fn", "ob": "ob", "cob": "ob", "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl", "cfl": "fl"}[kind]
        if ident is not None:
            if name:
                names[table][ident] = name
            name = names[table].get(ident, name)
        if kind == "fn":
            cur_fn = name
            obj_of.setdefault(name, cur_ob)
        elif kind == "ob":
            cur_ob = name
    return self_cost, incl_calls, obj_of, total


def category(fn, ob):
    for name, rx in COMPILED:
        if rx.search(fn) or (name in ("crypto (OpenSSL)", "libcoap") and rx.search(ob)):
            return name
    if "libc.so" in ob or "ld-linux" in ob:
        return "libc (other)"
    return "other (std, closures, futures glue)"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    top = 15
    if "--top" in sys.argv:
        top = int(sys.argv[sys.argv.index("--top") + 1])
        args = [a for a in args if a != str(top)]
    path = args[0]
    requests = int(args[1]) if len(args) > 1 else 1
    self_cost, incl_calls, obj_of, total = parse(path)
    cats = defaultdict(int)
    for fn, cost in self_cost.items():
        cats[category(fn or "", obj_of.get(fn, ""))] += cost
    print(f"total {total:,} Ir = {total / requests:,.0f} Ir/request over {requests} requests\n")
    print("| category (self cost) | Ir/request | share |")
    print("| --- | ---: | ---: |")
    for name, cost in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {cost / requests:,.0f} | {100 * cost / total:.1f}% |")
    print(f"\n| top {top} functions by self cost | Ir/request | share |")
    print("| --- | ---: | ---: |")
    for fn, cost in sorted(self_cost.items(), key=lambda kv: -kv[1])[:top]:
        short = re.sub(r"\[.*?\]", "", fn or "?")[:110]
        print(f"| `{short}` | {cost / requests:,.0f} | {100 * cost / total:.1f}% |")
    incl = {fn: self_cost.get(fn, 0) + incl_calls.get(fn, 0) for fn in set(self_cost) | set(incl_calls)}
    print(f"\n| top {top} functions by inclusive cost (below the runtime's task poll) | Ir/request | share |")
    print("| --- | ---: | ---: |")
    skip = re.compile(r"^(clone|start_thread|std::|core::ops::function|tokio::runtime::(scheduler|task|context|blocking)|<tokio::runtime|<std::|<core::pin::Pin|<core::future::poll_fn|\(below main\)|__libc_start|0x0)")
    shown = 0
    for fn, cost in sorted(incl.items(), key=lambda kv: -kv[1]):
        if fn is None or skip.search(fn):
            continue
        short = re.sub(r"\[.*?\]", "", fn)[:110]
        print(f"| `{short}` | {cost / requests:,.0f} | {100 * cost / total:.1f}% |")
        shown += 1
        if shown >= top:
            break


main()
