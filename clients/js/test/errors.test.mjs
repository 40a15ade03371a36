// Every error code of PROTOCOL.md's error table has its own typed error class.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { ChatfabricError, errorFromFrame } from "../dist/index.js";

test("every PROTOCOL.md error code is a typed error", () => {
  const protocol = readFileSync(new URL("../../../PROTOCOL.md", import.meta.url), "utf8");
  const table = protocol.slice(protocol.indexOf("| code "), protocol.indexOf("**Over HTTP**"));
  const codes = [...table.matchAll(/^\| `([a-z_]+)`/gm)].map((m) => m[1]);
  assert.ok(codes.length >= 12, `found the table's codes: ${codes}`);
  for (const code of codes) {
    const e = errorFromFrame({ code, message: "m", ref: "r" });
    assert.ok(e instanceof ChatfabricError, code);
    assert.notEqual(e.constructor, ChatfabricError, `${code} has no class of its own`);
    const name = code.replace(/(^|_)([a-z])/g, (_, __, c) => c.toUpperCase()) + "Error";
    assert.equal(e.name, name, code);
    assert.deepEqual([e.code, e.ref], [code, "r"]);
  }
});
