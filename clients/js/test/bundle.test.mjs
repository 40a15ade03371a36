// The browser bundle the gateway builds into its binary is the one these sources produce.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { bundleOptions } from "../scripts/bundle.mjs";

test("gateway/demo/chatfabric.js is up to date (else: npm run build, and commit it)", async () => {
  const built = await build({ ...bundleOptions, write: false, outfile: "chatfabric.js" });
  const committed = readFileSync(fileURLToPath(new URL("../../../gateway/demo/chatfabric.js", import.meta.url)), "utf8");
  assert.equal(committed, built.outputFiles[0].text);
});
