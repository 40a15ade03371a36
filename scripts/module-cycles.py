#!/usr/bin/env python3
"""Import circles between the files of each crate (issue 11: "no import circle between files of a crate").

For every crate of the workspace this builds a graph with one node per source file under src/ and an
edge a -> b when a declares module b (`mod b;`) or names something defined in b through `crate::`,
`super::` or `self::` (in a `use` or as a path in code). A name that a file only re-exports
(`pub use child::X`) is followed to the file that defines it, so `use crate::X` for a re-exported X
points at X's own file. `#[cfg(test)]` modules, comments and string literals are left out. Prints
every crate's edge count and each cycle found; exits 1 if there is one.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = [".", "nats", "storage", "gateway", "persister", "presence", "webhooks", "loadtest"]
IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip(text):
    """Source without comments, string/char literals and `#[cfg(test)]` items."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif re.match(r'r#*"', text[i : i + 10]) and (i == 0 or not re.match(r"\w", text[i - 1])):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            i = n if end < 0 else end + 1 + len(hashes)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i : i + 4]):
            i = text.find("'", i + 2) + 1
            out.append("' '")
        else:
            out.append(c)
            i += 1
    code = "".join(out)
    # Drop `#[cfg(test)]` items: an inline `mod x { ... }` up to its closing brace, `mod x;`, or any
    # other item up to its end.
    while True:
        m = re.search(r"#\[cfg\(test\)\]", code)
        if not m:
            return code
        j = m.end()
        while j < len(code) and code[j] not in "{;":
            j += 1
        if j < len(code) and code[j] == "{":
            depth = 0
            while j < len(code):
                depth += {"{": 1, "}": -1}.get(code[j], 0)
                j += 1
                if depth == 0:
                    break
        else:
            j += 1
        code = code[: m.start()] + code[j:]


def module_path(src, file):
    """The module path of a file under src/: src/a/b.rs and src/a/b/mod.rs are a::b."""
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] == "mod" or (len(parts) == 1 and parts[0] in ("lib", "main")):
        parts = parts[:-1]
    return tuple(parts)


def expand_use(tree):
    """`a::{b, c::{d, e as f}}` -> [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+", "", tree)
    depth, start = 0, tree.find("{")
    if start < 0:
        return [re.sub(r"as" + IDENT + "$", "", tree) if "as" in tree else tree]
    prefix = tree[:start]
    inner, parts, cur = tree[start + 1 : tree.rfind("}")], [], ""
    for ch in inner:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [prefix + p2 for p in parts if p for p2 in expand_use(p)]


def strip_alias(path):
    return re.sub(r"\bas" + IDENT + "$", "", path) if re.search(r"[A-Za-z0-9_]as[A-Za-z_]", path) else path


def crate_graph(crate_dir):
    src = crate_dir / "src"
    files = {}
    roots = [p for p in (src / "lib.rs", src / "main.rs") if p.exists()]
    # Files reachable through non-test `mod` declarations, from each crate root.
    todo = list(roots)
    while todo:
        f = todo.pop()
        if f in files:
            continue
        code = strip(f.read_text())
        files[f] = code
        base = f.parent if f.name in ("mod.rs", "lib.rs", "main.rs") else f.with_suffix("")
        for name in re.findall(r"\bmod\s+(" + IDENT + r")\s*;", code):
            for cand in (base / (name + ".rs"), base / name / "mod.rs"):
                if cand.exists():
                    todo.append(cand)
    # Each root (lib.rs, main.rs) is its own crate: keep the module table per root.
    graphs = {}
    for root in roots:
        reach, todo = set(), [root]
        while todo:
            f = todo.pop()
            if f in reach:
                continue
            reach.add(f)
            base = f.parent if f.name in ("mod.rs", "lib.rs", "main.rs") else f.with_suffix("")
            for name in re.findall(r"\bmod\s+(" + IDENT + r")\s*;", files[f]):
                for cand in (base / (name + ".rs"), base / name / "mod.rs"):
                    if cand.exists():
                        todo.append(cand)
        graphs[root] = reach
    result = {}
    for root, reach in graphs.items():
        by_mod = {module_path(src, f) if f != root else (): f for f in reach}
        # Re-exports: (module, name) -> absolute path it re-exports.
        reexports = {}
        for f in reach:
            mod = () if f == root else module_path(src, f)
            for tree in re.findall(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", files[f]):
                for p in expand_use(tree):
                    p = strip_alias(p)
                    absolute = absolutize(mod, p.split("::"), by_mod)
                    if absolute:
                        reexports[(mod, absolute[-1])] = absolute

        def resolve(segments, seen=0):
            """The file that defines `segments` (an absolute module path plus maybe an item)."""
            segments = tuple(s for s in segments if s not in ("*", "self"))
            for k in range(len(segments), -1, -1):
                if segments[:k] in by_mod:
                    mod = segments[:k]
                    rest = segments[k:]
                    if rest and (mod, rest[0]) in reexports and seen < 8:
                        return resolve(reexports[(mod, rest[0])] + rest[1:], seen + 1)
                    return by_mod[mod]
            return None

        edges = set()
        for f in reach:
            mod = () if f == root else module_path(src, f)
            code = files[f]
            base = f.parent if f.name in ("mod.rs", "lib.rs", "main.rs") else f.with_suffix("")
            for name in re.findall(r"\bmod\s+(" + IDENT + r")\s*;", code):
                child = by_mod.get(mod + (name,))
                if child:
                    edges.add((f, child))
            paths = []
            for tree in re.findall(r"\buse\s+([^;]+);", code):
                paths += [strip_alias(p).split("::") for p in expand_use(tree)]
            for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:crate|super|self)(?:::" + IDENT + r")+)", code):
                paths.append(m.group(1).split("::"))
            for p in paths:
                if p[0] not in ("crate", "super", "self"):
                    continue
                absolute = absolutize(mod, p, by_mod)
                if absolute is None:
                    continue
                target = resolve(absolute)
                if target and target != f:
                    edges.add((f, target))
        result[root] = (reach, edges)
    return result


def absolutize(mod, segments, by_mod):
    """A `crate::`/`super::`/`self::` path as an absolute module path (None for external crates)."""
    segments = [s for s in segments if s]
    if not segments:
        return None
    if segments[0] == "crate":
        return tuple(segments[1:])
    cur = list(mod)
    if segments[0] in ("super", "self"):
        while segments and segments[0] in ("super", "self"):
            if segments.pop(0) == "super":
                cur = cur[:-1]
        return tuple(cur + segments)
    # A relative path (`pub use child::X`): a child module of this one.
    if tuple(cur + segments[:1]) in by_mod:
        return tuple(cur + segments)
    return None


def cycles(nodes, edges):
    """Strongly connected components of more than one file (Tarjan)."""
    succ = {n: sorted(b for a, b in edges if a == n) for n in nodes}
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for n in sorted(nodes):
        if n not in index:
            visit(n)
    return out


def main():
    found = 0
    for crate in CRATES:
        for root, (nodes, edges) in crate_graph(ROOT / crate).items():
            name = str(root.relative_to(ROOT))
            comps = cycles(nodes, edges)
            print(f"{name}: {len(nodes)} files, {len(edges)} edges, {len(comps)} circles")
            for comp in comps:
                found += 1
                members = {str(f.relative_to(ROOT)) for f in comp}
                print("  circle: " + " <-> ".join(sorted(members)))
                for a, b in sorted(edges):
                    if a in comp and b in comp:
                        print(f"    {a.relative_to(ROOT)} -> {b.relative_to(ROOT)}")
    if found:
        print(f"{found} import circle(s) between files")
        return 1
    print("no import circle between files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
