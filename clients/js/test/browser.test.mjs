// The demo page in headless Chromium (the distribution's, driven by puppeteer-core): two users
// in two browser contexts chat through a real `chatfabric dev`. Screenshots go to
// test/screenshots/ (their paths are printed).
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import puppeteer from "puppeteer-core";
import { DevFabric } from "./support/fabric.mjs";

const shots = fileURLToPath(new URL("./screenshots/", import.meta.url));
const chromium = process.env.CHROMIUM ?? "/usr/bin/chromium";
let fabric;
let browser;

before(async () => {
  fabric = await DevFabric.start();
  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
    ],
  });
  mkdirSync(shots, { recursive: true });
});
after(async () => {
  await browser?.close();
  await fabric?.close();
});

async function signIn(name) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width: 1100, height: 700 });
  page.on("pageerror", (e) => console.error(`[${name}] page error:`, e.message));
  await page.goto(`${fabric.http}/`);
  await page.type("#name", name);
  await page.click("#login-form button[type=submit]");
  await connectedPage(page);
  return page;
}

const connectedPage = (page) => page.waitForSelector('#state[data-state="connected"]', { timeout: 30_000 });

/** The bodies of the open conversation's stored messages, in display order. */
const shown = (page) => page.$$eval("#messages li[data-seq] .body", (els) => els.map((e) => e.textContent));

async function waitShown(page, expected) {
  await page.waitForFunction(
    (want) => {
      const got = [...document.querySelectorAll("#messages li[data-seq] .body")].map((e) => e.textContent);
      return got.length >= want.length;
    },
    { timeout: 30_000 },
    expected,
  );
  assert.deepEqual(await shown(page), expected);
}

async function say(page, text) {
  await page.type("#text", text);
  await page.keyboard.press("Enter");
}

async function screenshot(page, name) {
  const path = `${shots}${name}.png`;
  await page.screenshot({ path });
  console.log(`screenshot: ${path}`);
}

const badge = (page, title) =>
  page.evaluate((t) => {
    const li = [...document.querySelectorAll("#convs li")].find((l) => l.querySelector(".name").textContent === t);
    return li ? li.querySelector(".badge").textContent : null;
  }, title);

test("two users chat in the demo page: order, typing, presence, reload with history and unread", async () => {
  const alice = await signIn("alice");
  const bob = await signIn("bob");

  // Alice starts a group with Bob; it shows up in Bob's list.
  await alice.type("#new-members", "bob");
  await alice.type("#new-title", "lunch");
  await alice.click("#new-group");
  await alice.waitForFunction(() => document.querySelector("#chat-title").textContent === "# lunch");
  await bob.waitForFunction(() => [...document.querySelectorAll("#convs .name")].some((n) => n.textContent === "# lunch"), {
    timeout: 15_000,
  });
  await bob.evaluate(() => [...document.querySelectorAll("#convs li")].find((l) => l.textContent.includes("# lunch")).click());
  await bob.waitForFunction(() => document.querySelector("#chat-title").textContent === "# lunch");

  // Messages in order on both sides.
  const expected = [];
  for (const [page, text] of [
    [alice, "noon?"],
    [bob, "sure, where?"],
    [alice, "the usual"],
    [bob, "see you there"],
  ]) {
    await say(page, text);
    expected.push(text);
    await waitShown(alice, expected);
    await waitShown(bob, expected);
  }

  // Typing and presence.
  await bob.type("#text", "on my w");
  await alice.waitForFunction(() => document.querySelector("#typing").textContent === "bob is typing…", { timeout: 10_000 });
  await alice.waitForSelector('#members li[data-user="bob"] .dot.online', { timeout: 10_000 });
  await bob.$eval("#text", (el) => (el.value = ""));
  // Bob's receipt reaches Alice.
  await alice.waitForFunction(() => document.querySelector("#messages .receipt")?.textContent === "✓ read by bob", {
    timeout: 10_000,
  });
  await screenshot(alice, "alice-conversation");

  // Bob looks at another conversation; Alice writes twice in "lunch": two unread for Bob.
  await bob.type("#new-members", "alice");
  await bob.click("#new-direct");
  await bob.waitForFunction(() => document.querySelector("#chat-title").textContent === "alice");
  await say(alice, "running late");
  await say(alice, "10 minutes");
  expected.push("running late", "10 minutes");
  await waitShown(alice, expected);
  await bob.waitForFunction(() => {
    const li = [...document.querySelectorAll("#convs li")].find((l) => l.textContent.includes("# lunch"));
    return li?.querySelector(".badge").textContent === "2";
  }, { timeout: 10_000 });

  // Bob reloads: signed in again, the count comes from the gateway, the history from storage.
  await bob.reload();
  await connectedPage(bob);
  await bob.waitForFunction(() => [...document.querySelectorAll("#convs .name")].some((n) => n.textContent === "# lunch"));
  await bob.waitForFunction(() => {
    const li = [...document.querySelectorAll("#convs li")].find((l) => l.textContent.includes("# lunch"));
    return li?.querySelector(".badge").textContent === "2";
  }, { timeout: 10_000 });
  assert.equal(await badge(bob, "# lunch"), "2");
  await bob.evaluate(() => [...document.querySelectorAll("#convs li")].find((l) => l.textContent.includes("# lunch")).click());
  await waitShown(bob, expected);
  assert.equal(await badge(bob, "# lunch"), "");
  await screenshot(bob, "bob-after-reload");

  // The fabric goes away and comes back: both pages show it, reconnect, and lose nothing.
  await fabric.stop();
  await alice.waitForSelector('#state[data-state="disconnected"], #state[data-state="connecting"]', { timeout: 15_000 });
  await say(alice, "sent while offline");
  expected.push("sent while offline");
  await alice.waitForSelector("#messages li.pending");
  await screenshot(alice, "alice-offline");
  await fabric.spawn();
  await connectedPage(alice);
  await connectedPage(bob);
  await waitShown(bob, expected);
  await waitShown(alice, expected);
  await say(bob, "made it");
  expected.push("made it");
  await waitShown(alice, expected);
  await waitShown(bob, expected);
});
