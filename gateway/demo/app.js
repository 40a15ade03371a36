// The demo chat page: everything it does goes through the SDK (/chatfabric.js, built from
// clients/js). Sign in with a name (the dev gateway mints a token), or paste a token elsewhere.
import { connect } from "/chatfabric.js";

const $ = (id) => document.getElementById(id);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
const PAGE = 30;

let client;
let me;
let open = null;
/** conv -> { info, members, messages: Map<seq, msg>, pending: Map<clientId, {body, error?}>, ... } */
const convs = new Map();
/** user -> { online, lastSeen } */
const presence = new Map();

// ---- signing in -------------------------------------------------------------------------------

async function devToken(name) {
  const res = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user: name }),
  });
  if (res.status === 404) return null;
  const body = await res.json();
  if (!res.ok) throw new Error(body.message ?? `HTTP ${res.status}`);
  return body.token;
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  const name = $("name").value.trim();
  const pasted = $("token").value.trim();
  try {
    if (pasted) return start(name || "(token)", pasted);
    if ((await devToken(name)) === null) {
      $("token-row").hidden = false;
      $("name-row").hidden = true;
      $("login-error").textContent = "This gateway does not mint tokens: paste one.";
      return;
    }
    sessionStorage.setItem("chatfabric-user", name);
    start(name);
  } catch (e) {
    $("login-error").textContent = e.message;
  }
});

$("signout").addEventListener("click", () => {
  client?.close();
  sessionStorage.removeItem("chatfabric-user");
  location.reload();
});
$("drop").addEventListener("click", () => client?.reconnect());

function start(name, token) {
  $("login").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = $("drop").hidden = false;
  $("me").textContent = name;
  client = connect(wsUrl, {
    getToken: token ? () => token : async () => (await devToken(name)) ?? Promise.reject(new Error("no token")),
  });
  window.chatfabricDemo = { client };
  client.on("state", onState);
  client.on("message", onMessage);
  client.on("unread", renderConvs);
  client.on("typing", ({ conv }) => conv === open && renderTyping());
  client.on("presence", (p) => {
    presence.set(p.user, { online: p.online, lastSeen: p.lastSeen });
    renderConvs();
    renderMembers();
  });
  client.on("read", (r) => {
    const entry = convs.get(r.conv);
    if (!entry) return;
    entry.receipts.set(r.user, Math.max(r.seq, entry.receipts.get(r.user) ?? 0));
    if (r.conv === open) renderMessages();
  });
  setInterval(() => client.state.state === "connected" && refreshConvs(), 3000);
  setInterval(renderMembers, 30_000);
}

function onState(s) {
  const pill = $("state");
  pill.dataset.state = s.state;
  if (s.state === "connected") {
    me = s.user;
    $("me").textContent = me;
    pill.textContent = "connected";
    pill.title = `connection ${s.conn}`;
    refreshConvs();
    renderMembers();
  } else if (s.state === "connecting") {
    pill.textContent = s.attempt > 1 ? `connecting (attempt ${s.attempt})` : "connecting";
  } else {
    const code = s.code ? ` ${s.code}` : "";
    const retry = s.willRetry ? `, retrying in ${(s.retryInMs / 1000).toFixed(1)} s` : "";
    pill.textContent = `disconnected${code}${retry}`;
    pill.title = s.reason;
    renderConvs();
    renderMembers();
  }
}

// ---- conversations ------------------------------------------------------------------------------

// The protocol has no "you were added to a conversation" event: the list is polled while
// connected (every 3 s) and refreshed on every (re)connect.
async function refreshConvs() {
  let list;
  try {
    list = await client.conversations();
  } catch {
    return; // disconnected: the next state change refreshes
  }
  for (const info of list) {
    if (convs.has(info.conv)) continue;
    const entry = {
      info,
      members: [],
      messages: new Map(),
      pending: new Map(),
      receipts: new Map(),
      older: null,
      exhausted: false,
      loading: false,
      readSent: 0,
    };
    convs.set(info.conv, entry);
    client.subscribe(info.conv);
    loadMembers(entry);
  }
  renderConvs();
}

async function loadMembers(entry) {
  try {
    entry.members = await client.members(entry.info.conv);
  } catch {
    return;
  }
  for (const user of entry.members) {
    if (user === me || presence.has(user)) continue;
    presence.set(user, { online: false });
    client
      .presence(user)
      .then((p) => {
        presence.set(user, { online: p.online, lastSeen: p.lastSeen });
        renderConvs();
        renderMembers();
      })
      .catch(() => {});
  }
  renderConvs();
  if (entry.info.conv === open) renderHead();
}

const connected = () => client.state.state === "connected";
/** Whether any of `users` is online, as far as we know: while disconnected we do not. */
const isOnline = (users) => connected() && users.some((u) => (u === me ? true : presence.get(u)?.online));

function nameOf(entry) {
  if (entry.info.title) return entry.info.title;
  const others = entry.members.filter((u) => u !== me);
  return others.length ? others.join(", ") : entry.info.conv;
}

function latestTs(entry) {
  let ts = 0;
  for (const m of entry.messages.values()) ts = Math.max(ts, m.ts);
  return ts;
}

function renderConvs() {
  const ul = $("convs");
  const sorted = [...convs.values()].sort((a, b) => latestTs(b) - latestTs(a) || nameOf(a).localeCompare(nameOf(b)));
  ul.replaceChildren(
    ...sorted.map((entry) => {
      const li = document.createElement("li");
      li.dataset.conv = entry.info.conv;
      li.classList.toggle("active", entry.info.conv === open);
      const dot = document.createElement("span");
      const online = isOnline(entry.members.filter((u) => u !== me));
      dot.className = online ? "dot online" : "dot";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = (entry.info.kind === "group" ? "# " : "") + nameOf(entry);
      const badge = document.createElement("span");
      badge.className = "badge";
      const unread = client.unreadCount(entry.info.conv);
      badge.textContent = unread > 0 && entry.info.conv !== open ? String(unread) : "";
      li.append(dot, name, badge);
      li.addEventListener("click", () => openConv(entry.info.conv));
      return li;
    }),
  );
}

$("new-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("new-error").textContent = "";
  const kind = ev.submitter?.value ?? "group";
  const users = $("new-members").value.split(/[\s,]+/).filter(Boolean);
  try {
    if (kind === "direct" && users.length !== 1) throw new Error("a direct conversation is with one user");
    const created =
      kind === "direct" ? await client.createDirect(users[0]) : await client.createGroup(users, $("new-title").value.trim() || undefined);
    $("new-members").value = $("new-title").value = "";
    await refreshConvs();
    openConv(created.conversation.conv);
  } catch (e) {
    $("new-error").textContent = e.code ? `${e.code}: ${e.message}` : e.message;
  }
});

// ---- the open conversation -------------------------------------------------------------------

async function openConv(conv) {
  if (open && open !== conv) client.stopTyping(open);
  open = conv;
  const entry = convs.get(conv);
  for (const id of ["chat-head", "messages", "composer"]) $(id).hidden = false;
  $("empty").hidden = true;
  renderHead();
  renderConvs();
  renderTyping();
  $("messages").replaceChildren();
  if (!entry.older) {
    entry.older = client.history(conv, { pageSize: PAGE });
    await loadOlder(entry);
  }
  renderMessages();
  scrollToEnd();
  markRead(entry);
  $("text").focus();
}

function renderHead() {
  const entry = convs.get(open);
  if (!entry) return;
  $("chat-title").textContent = (entry.info.kind === "group" ? "# " : "") + nameOf(entry);
  renderMembers();
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}

function renderMembers() {
  const entry = convs.get(open);
  if (!entry) return;
  $("members").replaceChildren(
    ...entry.members.map((user) => {
      const li = document.createElement("li");
      li.dataset.user = user;
      const p = user === me ? { online: connected() } : presence.get(user) ?? { online: false };
      const dot = document.createElement("span");
      dot.className = isOnline([user]) ? "dot online" : "dot";
      const label = document.createElement("span");
      label.textContent = user === me ? `${user} (you)` : user;
      li.title = p.online ? "online" : p.lastSeen ? `last seen ${ago(p.lastSeen)}` : "never seen";
      const seen = document.createElement("span");
      seen.className = "muted";
      seen.textContent = p.online || user === me ? "" : p.lastSeen ? `· last seen ${ago(p.lastSeen)}` : "· offline";
      li.append(dot, label, seen);
      return li;
    }),
  );
}

function renderTyping() {
  const users = open ? client.typingIn(open) : [];
  $("typing").textContent = users.length === 0 ? "" : `${users.join(", ")} ${users.length === 1 ? "is" : "are"} typing…`;
}

/** Pulls one more page of older messages into the open conversation. */
async function loadOlder(entry) {
  if (entry.loading || entry.exhausted) return;
  entry.loading = true;
  const list = $("messages");
  const fromBottom = list.scrollHeight - list.scrollTop;
  try {
    for (let i = 0; i < PAGE; i++) {
      const { value, done } = await entry.older.next();
      if (done) {
        entry.exhausted = true;
        break;
      }
      entry.messages.set(value.seq, value);
    }
  } catch {
    // The walk failed (e.g. timed out while offline): start a new one below what we have.
    const before = entry.messages.size ? Math.min(...entry.messages.keys()) : undefined;
    entry.older = client.history(entry.info.conv, { before, pageSize: PAGE });
  } finally {
    entry.loading = false;
  }
  if (entry.info.conv === open) {
    renderMessages();
    list.scrollTop = list.scrollHeight - fromBottom;
  }
}

$("messages").addEventListener("scroll", () => {
  const entry = convs.get(open);
  if (entry && $("messages").scrollTop < 40) loadOlder(entry);
});

function renderMessages() {
  const entry = convs.get(open);
  if (!entry) return;
  const list = $("messages");
  const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const seqs = [...entry.messages.keys()].sort((a, b) => a - b);
  // Where each other member's read cursor stands: the newest message at or below it.
  const readers = new Map();
  for (const [user, seq] of entry.receipts) {
    if (user === me) continue;
    const at = seqs.filter((s) => s <= seq).pop();
    if (at !== undefined) readers.set(at, [...(readers.get(at) ?? []), user]);
  }
  const items = [];
  const note = document.createElement("li");
  note.className = "note";
  note.textContent = entry.exhausted ? "beginning of the conversation" : "scroll up for older messages";
  items.push(note);
  for (const seq of seqs) {
    const m = entry.messages.get(seq);
    items.push(bubble(m.sender, m.body, m.ts, { seq, readBy: readers.get(seq) }));
  }
  for (const [clientId, p] of entry.pending) {
    items.push(bubble(me, p.body, undefined, { clientId, error: p.error }));
  }
  list.replaceChildren(...items);
  if (atEnd) scrollToEnd();
}

function bubble(sender, body, ts, { seq, clientId, readBy, error }) {
  const li = document.createElement("li");
  li.className = sender === me ? "mine" : "";
  if (seq !== undefined) li.dataset.seq = String(seq);
  else li.classList.add("pending");
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${sender} · ${ts ? new Date(ts).toLocaleTimeString() : error ? `not sent: ${error}` : "sending…"}`;
  const text = document.createElement("div");
  text.className = "body";
  text.textContent = body;
  li.append(meta, text);
  if (readBy) {
    const receipt = document.createElement("div");
    receipt.className = "receipt";
    receipt.textContent = `✓ read by ${readBy.join(", ")}`;
    li.append(receipt);
  }
  if (clientId) li.dataset.clientId = clientId;
  return li;
}

function scrollToEnd() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

function onMessage(m) {
  const entry = convs.get(m.conv);
  if (!entry) return;
  entry.messages.set(m.seq, m);
  entry.pending.delete(m.client_id);
  if (m.conv === open) {
    renderMessages();
    renderTyping();
    markRead(entry);
  }
  renderConvs();
}

function markRead(entry) {
  if (document.visibilityState !== "visible") return;
  const latest = Math.max(0, ...entry.messages.keys());
  if (latest <= entry.readSent) return;
  entry.readSent = latest;
  client.markRead(entry.info.conv, latest).catch(() => (entry.readSent = 0));
}

document.addEventListener("visibilitychange", () => open && markRead(convs.get(open)));

$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const body = $("text").value.trim();
  if (!body || !open) return;
  const entry = convs.get(open);
  const sent = client.send(open, body);
  if (sent.clientId) entry.pending.set(sent.clientId, { body });
  sent.catch((e) => {
    const p = entry.pending.get(sent.clientId);
    if (p) p.error = e.code ?? e.message;
    if (entry.info.conv === open) renderMessages();
  });
  $("text").value = "";
  renderMessages();
  scrollToEnd();
});

$("text").addEventListener("input", () => {
  if (!open) return;
  if ($("text").value) client.typing(open);
  else client.stopTyping(open);
});

// ---- start ----------------------------------------------------------------------------------------

const remembered = new URLSearchParams(location.search).get("user") ?? sessionStorage.getItem("chatfabric-user");
if (remembered) {
  sessionStorage.setItem("chatfabric-user", remembered);
  start(remembered);
}
