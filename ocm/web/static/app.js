// The chat page: the lobby (name, room, password, the room list), then one
// room's conversation. Every piece of text from the network is set with
// textContent, never parsed as HTML (the page's CSP enforces Trusted Types).

import { Connection, CLOSE } from "./connection.js";
import { commandWords, eventSentence, frameError, nameProblem, reasonProblem, refusal, sentences, textProblem } from "./sentences.js";

const $ = (id) => document.getElementById(id);
const ui = {
  status: $("status"), notice: $("notice"), lobby: $("lobby"), chat: $("chat"),
  enter: $("enter"), name: $("name"), room: $("room"), password: $("password"),
  join: $("join"), create: $("create"), refresh: $("refresh"), rooms: $("rooms"),
  roomsEmpty: $("rooms-empty"), roomTitle: $("room-title"), leave: $("leave"),
  log: $("log"), members: $("members"), say: $("say"), line: $("line"), send: $("send"),
  confirm: $("confirm"), confirmText: $("confirm-text"), reason: $("reason"), confirmDo: $("confirm-do"),
  confirmCancel: $("confirm-cancel"),
};

const VERSION = "1.2"; // the protocol version this page is served (docs/protocol.md §8)

const EARLIER = 20; // messages asked for on joining
const RESEND_AFTER = [1500, 3000, 6000]; // ms; then the line is marked not delivered
const HISTORY_MAX = 100;
// Events that change the room and take its next seq (1.2), besides messages.
const CHANGES = new Set(["joined", "left", "timed_out", "kicked", "banned", "unbanned", "muted", "unmuted", "host", "closed"]);

let conn = null; // the lobby's or the member's connection
let session = null; // the room we are in (or were in, until "Back to rooms")

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" });
}

function notice(text, kind = "bad") {
  ui.notice.textContent = text;
  ui.notice.className = kind === "info" ? "notice info" : "notice";
  ui.notice.hidden = !text;
}

function setStatus(text) {
  ui.status.textContent = text;
}

// The current connection, opened on demand; a replaced one says nothing more.
function connection() {
  if (!conn) {
    const c = new Connection({
      event: (frame) => c === conn && onEvent(frame),
      error: (frame) => c === conn && onError(frame),
      closed: (info) => {
        if (c !== conn) return;
        conn = null;
        onClosed(info);
      },
    });
    conn = c;
  }
  return conn;
}

// -- the lobby -------------------------------------------------------------

function showLobby() {
  ui.chat.hidden = true;
  ui.lobby.hidden = false;
  setStatus("Not in a room");
  document.title = "ocm chat";
}

async function listRooms() {
  ui.refresh.disabled = true;
  try {
    const { response, complete } = await connection().request({ op: "list" });
    if (!complete) {
      notice(refusal("list", "", "", response, false));
      return;
    }
    ui.rooms.replaceChildren();
    for (const room of complete.rooms) {
      const button = el("button");
      button.type = "button";
      button.append(el("span", "room-name", room.name));
      const count = room.members === 1 ? "1 member" : `${room.members} members`;
      button.append(el("span", "meta", room.password ? `${count} · password` : count));
      button.addEventListener("click", () => {
        ui.room.value = room.name;
        (ui.name.value === "" ? ui.name : room.password ? ui.password : ui.join).focus();
      });
      const item = el("li");
      item.append(button);
      ui.rooms.append(item);
    }
    ui.roomsEmpty.hidden = complete.rooms.length > 0;
  } catch {
    notice(sentences.unreachable());
  } finally {
    ui.refresh.disabled = false;
  }
}

async function enter(op) {
  notice(""); // the last refusal goes; the answer to this one replaces it
  const name = ui.name.value;
  const room = ui.room.value;
  const password = ui.password.value;
  for (const [value, what, field] of [[name, "your name", ui.name], [room, "the room's name", ui.room]]) {
    const problem = nameProblem(value, what);
    if (problem) {
      notice(problem);
      field.focus();
      return;
    }
  }
  ui.join.disabled = ui.create.disabled = true;
  try {
    const { response, complete } = await connection().request({ op, room, username: name, password, version: VERSION });
    if (!complete) {
      notice(refusal(op, room, name, response, password !== ""));
      (response.status === 409 && op === "join" ? ui.name : response.status === 401 ? ui.password : ui.room).focus();
      if (response.status === 404 || response.status === 409) listRooms();
      return;
    }
    notice("");
    begin(complete, name, password);
  } catch {
    notice(sentences.unreachable());
  } finally {
    ui.join.disabled = ui.create.disabled = false;
  }
}

// -- a room ------------------------------------------------------------------

function begin(complete, name, password) {
  session = {
    room: complete.room, name, password, timeout: complete.timeout,
    active: true, seq: complete.seq, nextId: 1, pending: new Map(), seen: new Map(),
    members: [], hostName: "", muted: new Set(), marker: null, earlier: null, asked: 0,
  };
  ui.log.replaceChildren();
  ui.roomTitle.textContent = complete.room;
  document.title = `${complete.room} · ocm chat`;
  ui.leave.textContent = "Leave";
  ui.line.disabled = ui.send.disabled = false;
  ui.lobby.hidden = true;
  ui.chat.hidden = false;
  attach(complete, `You ${complete.host ? "created" : "joined"} room “${complete.room}” as “${name}”.`, 0);
  ui.line.focus();
}

// A membership starts (or restarts after a reconnect): the members, the
// host and the muted as COMPLETE says (1.2), a marker in the conversation,
// and what came before it: the messages from before joining, or every event
// missed while away.
function attach(complete, markerText, since) {
  const s = session;
  s.members = [...complete.members];
  s.hostName = complete.host_name ?? (complete.host ? s.name : s.hostName);
  s.muted = new Set(complete.muted || []);
  // (1.2) The secret that brings this membership back after a restart.
  s.resume = complete.resume || null;
  // A resumed membership goes on with its line numbers; a new one starts at 1.
  if (!complete.resumed) s.nextId = 1;
  renderMembers();
  s.marker = addLine(el("li", "divider", markerText));
  setStatus(`In room “${s.room}” as “${s.name}”`);
  // The last event of a join is our own JOINED: not asked for again.
  const last = complete.op === "join" && !complete.resumed ? complete.seq - 1 : complete.seq;
  if (last > 0 && complete.history > 0) {
    const first = since > 0 ? since + 1 : Math.max(1, last - Math.min(EARLIER, complete.history) + 1);
    if (first <= last) {
      s.earlier = since > 0 ? null : el("li", "divider", "Earlier messages");
      conn.send({ op: "history", first: Math.max(first, last - HISTORY_MAX + 1), last });
    }
  }
  s.seq = Math.max(s.seq, complete.seq);
  s.asked = s.seq;
  s.base = complete.seq; // what COMPLETE's member list already counts
}

const isHost = (s) => s.hostName === s.name;

function renderMembers() {
  const s = session;
  const host = isHost(s) && s.active;
  ui.members.replaceChildren(...s.members.map((m) => {
    const item = el("li");
    const marks = [m === s.name && "you", m === s.hostName && "host", s.muted.has(m) && "muted"].filter(Boolean);
    item.append(el("span", "member", marks.length ? `${m} (${marks.join(", ")})` : m));
    if (m === s.hostName) item.classList.add("host");
    if (s.muted.has(m)) item.classList.add("muted");
    if (host && m !== s.name) {
      const actions = el("span", "actions");
      const action = (label, what, run) => {
        const b = el("button", "small", label);
        b.type = "button";
        b.dataset.action = what;
        b.setAttribute("aria-label", `${label}: ${m}`);
        b.addEventListener("click", run);
        actions.append(b);
      };
      action(s.muted.has(m) ? "Unmute" : "Mute", s.muted.has(m) ? "unmute" : "mute", () => command(s.muted.has(m) ? "unmute" : "mute", m));
      action("Make host", "host", () => command("host", m));
      action("Remove", "kick", () => ask("kick", m));
      action("Ban", "ban", () => ask("ban", m));
      item.append(" ", actions);
    }
    return item;
  }));
  if (!host) ui.confirm.hidden = true;
  ui.line.placeholder = s.muted.has(s.name) ? "You are muted by the host" : "";
}

// Remove and ban ask first, with a reason the others will read.
function ask(what, name) {
  ui.confirm.dataset.command = what;
  ui.confirm.dataset.name = name;
  ui.confirmText.textContent = sentences.confirm(what, name);
  ui.confirmDo.textContent = what === "ban" ? "Ban" : "Remove";
  ui.reason.value = "";
  ui.confirm.hidden = false;
  ui.reason.focus();
}

function addLine(item) {
  const atBottom = ui.log.scrollTop + ui.log.clientHeight >= ui.log.scrollHeight - 8;
  ui.log.append(item);
  if (atBottom) item.scrollIntoView({ block: "end" });
  return item;
}

function messageItem(seq, time, name, text, cls) {
  const item = el("li", cls);
  if (seq) item.dataset.seq = seq;
  const stamp = el("time", null, time ? clock(time) : "--:--:--");
  if (time) stamp.dateTime = new Date(time).toISOString();
  // Spaces as text, so that a copied line reads "12:01:33 bob: hello".
  item.append(stamp, " ", el("span", "name", `${name}:`), " ", el("span", "text", text));
  return item;
}

function eventItem(frame, cls = "event") {
  const item = el("li", cls, eventSentence(frame, session.name));
  if (frame.seq) item.dataset.seq = frame.seq;
  return item;
}

// An event from before this membership (a message, or on coming back any
// change), put in seq order above its marker. Its change is not applied:
// COMPLETE's member list is newer.
function addEarlier(frame) {
  if (session.seen.has(frame.seq)) return;
  const message = frame.kind === "message" || frame.kind === "history";
  if (!message && session.earlier) return; // before joining, the messages only
  const item = message
    ? messageItem(frame.seq, frame.time, frame.name, frame.text, session.earlier ? "earlier" : "missed")
    : eventItem(frame, "event missed");
  if (session.earlier && !session.earlier.isConnected) ui.log.insertBefore(session.earlier, session.marker);
  let before = session.marker;
  if (frame.seq > session.base) {
    // A gap of this membership, repaired: in seq order after the marker.
    before = null;
    for (let node = ui.log.lastElementChild; node && node !== session.marker; node = node.previousElementSibling) {
      if (Number(node.dataset.seq || 0) > frame.seq) before = node;
    }
  } else {
    while (before.previousElementSibling && Number(before.previousElementSibling.dataset.seq || 0) > frame.seq) {
      before = before.previousElementSibling;
    }
  }
  ui.log.insertBefore(item, before);
  session.seen.set(frame.seq, item);
  item.scrollIntoView({ block: "nearest" });
}

// A live numbered event: seen once; a seq that skips asks for the gap (as the
// terminal client does; the socket is ordered, so this is a safety net).
function numbered(s, seq) {
  if (!seq) return true;
  if (s.seen.has(seq)) return false;
  if (seq > s.seq + 1 && seq - 1 > s.asked) {
    const first = Math.max(s.seq + 1, seq - HISTORY_MAX);
    conn.send({ op: "history", first, last: seq - 1 });
  }
  s.asked = Math.max(s.asked, seq);
  s.seq = Math.max(s.seq, seq);
  return true;
}

function onEvent(frame) {
  if (!session || !session.active) return;
  const s = session;
  if (frame.resent || frame.kind === "history") {
    addEarlier(frame);
    return;
  }
  switch (frame.kind) {
    case "message":
      if (!numbered(s, frame.seq)) return;
      s.seen.set(frame.seq, addLine(messageItem(frame.seq, frame.time, frame.name, frame.text)));
      return;
    case "expired":
      if (s.earlier) {
        if (!s.earlier.isConnected) ui.log.insertBefore(s.earlier, s.marker);
        s.earlier.after(el("li", "event", sentences.expired));
      } else {
        s.marker.before(el("li", "event missed", sentences.expired));
      }
      return;
    case "echo": {
      const line = s.pending.get(frame.id);
      if (!line) return;
      s.pending.delete(frame.id);
      clearTimeout(line.timer);
      if (line.item) {
        line.item.classList.remove("pending");
        line.item.dataset.seq = frame.seq;
        const stamp = line.item.querySelector("time");
        stamp.textContent = clock(frame.time);
        stamp.dateTime = new Date(frame.time).toISOString();
        numbered(s, frame.seq);
        s.seen.set(frame.seq, line.item);
      }
      return;
    }
    case "refused": {
      const line = s.pending.get(frame.id);
      if (!line) return;
      s.pending.delete(frame.id);
      clearTimeout(line.timer);
      if (line.item) {
        fail(line, sentences.refusedLine(frame.text));
      } else {
        const why = sentences.refusedCommand(commandWords(line.command, line.name), frame.text);
        addLine(el("li", "event closed refused", why));
        notice(why);
      }
      return;
    }
    case "restarting":
      s.restarting = true;
      notice(sentences.restarting, "info");
      addLine(el("li", "event", sentences.restarting));
      return;
  }
  if (!CHANGES.has(frame.kind) || !numbered(s, frame.seq)) return;
  const about = frame.name;
  switch (frame.kind) {
    case "joined":
      if (!s.members.includes(about)) s.members.push(about);
      break;
    case "left":
    case "timed_out":
    case "kicked":
    case "banned":
      s.members = s.members.filter((m) => m !== about);
      s.muted.delete(about);
      break;
    case "muted":
      s.muted.add(about);
      break;
    case "unmuted":
      s.muted.delete(about);
      break;
    case "host":
      s.hostName = about;
      s.warned = false;
      ui.leave.textContent = "Leave";
      break;
    case "closed":
      // What it means comes with the socket's close code: over (4000), or
      // the server stopping, to be joined again when it is back (4004).
      s.closedText = frame.text;
      return;
  }
  const item = eventItem(frame);
  s.seen.set(frame.seq, item);
  addLine(item);
  renderMembers();
  if ((frame.kind === "kicked" || frame.kind === "banned") && about === s.name) {
    // Removed by the host: back to the lobby, saying why.
    const why = eventSentence(frame, s.name);
    end(why);
    session = null;
    conn = null; // the server closes that socket (4003)
    showLobby();
    notice(why);
    ui.name.focus();
    listRooms();
  } else if (frame.kind === "host" && about === s.name) {
    notice(sentences.nowHost, "info");
  }
}

function onError(frame) {
  if (frame.status === 413 || !session) {
    notice(frameError(frame));
  } else {
    session.error = frameError(frame);
  }
}

// The membership is over: the conversation stays, the input does not.
function end(why) {
  const s = session;
  if (!s || !s.active) return;
  s.active = false;
  for (const line of s.pending.values()) fail(line);
  s.pending.clear();
  addLine(el("li", "event closed", why));
  notice(why, "info");
  ui.line.disabled = ui.send.disabled = true;
  ui.leave.textContent = "Back to rooms";
  setStatus(`Not in a room (was in “${s.room}”)`);
  renderMembers();
  ui.leave.focus();
}

// A line or command that will not be done: never dropped without a word.
function fail(line, why = sentences.undelivered) {
  clearTimeout(line.timer);
  if (!line.item) {
    addLine(el("li", "event closed refused", sentences.refusedCommand(commandWords(line.command, line.name), why)));
    return;
  }
  line.item.classList.remove("pending");
  line.item.classList.add("failed");
  line.item.append(" ", el("span", "state", why));
}

function say(text) {
  const s = session;
  const problem = textProblem(text);
  if (problem) {
    notice(problem);
    return false;
  }
  const id = s.nextId++;
  const item = addLine(messageItem(0, 0, s.name, text, "mine pending"));
  retry(s, { id, item, frame: { op: "send", id, text }, tries: 0, timer: 0 });
  return true;
}

// Sent until answered (ECHO or REFUSED), with the same id each time: the
// server acts once and answers again.
function retry(s, line) {
  s.pending.set(line.id, line);
  const attempt = () => {
    if (!s.active || !s.pending.has(line.id)) return;
    if (line.tries === RESEND_AFTER.length) {
      s.pending.delete(line.id);
      fail(line);
      return;
    }
    if (conn) conn.send(line.frame);
    line.timer = setTimeout(attempt, RESEND_AFTER[line.tries++]);
  };
  attempt();
}

// A host's command (1.2), from the member list.
function command(what, name, reason = "") {
  const s = session;
  if (!s || !s.active) return;
  const id = s.nextId++;
  const frame = { op: "command", id, command: what, name };
  if (reason) frame.reason = reason;
  retry(s, { id, command: what, name, item: null, frame, tries: 0, timer: 0 });
}

function leave() {
  const s = session;
  // A host with others in the room is told first that leaving closes it,
  // and offered to hand it over (as ocm-client does at /quit).
  if (s && s.active && isHost(s) && s.members.length > 1 && !s.warned) {
    s.warned = true;
    notice(sentences.hostLeaving(s.room), "info");
    ui.leave.textContent = "Leave and close the room";
    ui.leave.focus();
    return;
  }
  if (s && s.active) {
    s.active = false;
    for (const line of s.pending.values()) clearTimeout(line.timer);
    const old = conn;
    conn = null;
    if (old) {
      old.send({ op: "leave" });
      old.close();
    }
    notice(sentences.left(s.room), "info");
  } else {
    notice("");
  }
  session = null;
  showLobby();
  ui.room.focus();
  listRooms();
}

// -- a connection that ends -------------------------------------------------

function onClosed({ code, reason }) {
  const s = session;
  if (!s || !s.active) return; // the lobby's connection: reopened on the next request
  if (s.reconnecting) return; // an attempt that failed: the loop below goes on
  if (code === CLOSE.roomClosed) {
    end(sentences.closed(s.room, reason));
  } else if (code !== CLOSE.restarting && s.closedText !== undefined) {
    end(sentences.closed(s.room, s.closedText));
  } else if (code === CLOSE.removed) {
    end(sentences.removed(s.room));
  } else if (code === CLOSE.kicked) {
    end(sentences.kickedClose(s.room, reason)); // the event itself was lost: say why anyway
  } else if (code === CLOSE.malformed) {
    end(s.error || sentences.internal);
  } else if (code === CLOSE.internal) {
    end(sentences.internal);
  } else {
    // A restart (RESTARTING, then 4004), a dropped network, a server gone.
    reconnect(s, code === CLOSE.restarting || s.restarting);
  }
}

async function reconnect(s, restarting) {
  s.reconnecting = true;
  s.closedText = undefined;
  if (restarting && !s.restarting) addLine(el("li", "event", sentences.restarting));
  try {
    await rejoin(s, restarting);
  } finally {
    s.reconnecting = false;
    s.restarting = false;
  }
}

// Back into the room after the connection ended: join again under the same
// name; a room that is gone is created again by its host (with its
// password) and waited for by the others. The lines not yet answered are
// marked, never dropped without a word.
async function rejoin(s, restarting) {
  for (const line of s.pending.values()) fail(line);
  s.pending.clear();
  const wasHost = isHost(s);
  ui.line.disabled = ui.send.disabled = true;
  setStatus(`Reconnecting to “${s.room}”…`);
  const deadline = Date.now() + (s.timeout + 20) * 1000;
  let delay = 1;
  let said = restarting ? sentences.restartWait : sentences.dropped;
  // After a restart the server kept this membership: come back as it.
  let op = restarting && s.resume ? "resume" : "join";
  while (session === s && s.active && Date.now() < deadline) {
    notice(said(delay), "info");
    await new Promise((r) => setTimeout(r, delay * 1000));
    if (session !== s || !s.active) return;
    let result;
    try {
      result = await connection().request(op === "resume"
        ? { op, room: s.room, username: s.name, resume: s.resume }
        : { op, room: s.room, username: s.name, password: s.password, version: VERSION });
    } catch {
      said = restarting ? sentences.restartWait : sentences.dropped;
      delay = Math.min(delay * 2, 15);
      continue;
    }
    const { response, complete } = result;
    if (complete) {
      if (session !== s || !s.active) {
        const old = conn;
        conn = null;
        old.send({ op: "leave" });
        old.close();
        return;
      }
      ui.line.disabled = ui.send.disabled = false;
      // A room made anew (by us, or by its host) numbers from the start:
      // what was said while the server was away is not in it.
      // (The same room has at least our JOINED after what we saw.)
      const anew = !complete.resumed && (complete.op === "create" || complete.seq <= s.seq);
      if (anew) {
        s.seen.clear();
        s.seq = 0;
        s.asked = 0;
      }
      attach(complete, anew ? sentences.madeAnew(clock(Date.now()), complete.op === "create")
                            : `Reconnected at ${clock(Date.now())}.`, anew ? 0 : s.seq);
      if (anew) s.earlier = null;
      notice(anew ? sentences.backAnew(s.room) : sentences.reconnected, "info");
      ui.line.focus();
      return;
    }
    if (op === "resume") {
      op = "join"; // not kept after all (too late, or not its own): join anew
      s.resume = null;
      delay = 1;
      continue;
    } else if (response.status === 409 && op === "join") {
      said = sentences.waitingOld;
    } else if (response.status === 409) {
      op = "join"; // someone made it again first
      continue;
    } else if (response.status === 429 || response.status === 503) {
      delay = Math.max(delay, response.retry_after || delay);
      continue;
    } else if (response.status === 404 && wasHost) {
      op = "create"; // the server came back without the room: ours to make again
      continue;
    } else if (response.status === 404) {
      said = sentences.waitingHost;
    } else {
      end(refusal("join", s.room, s.name, response, s.password !== ""));
      return;
    }
    delay = Math.min(delay * 2, 15);
  }
  if (session === s) end(op === "join" && !wasHost ? sentences.gone(s.room) : sentences.gaveUp(s.room));
}

// -- wiring --------------------------------------------------------------------

ui.enter.addEventListener("submit", (e) => {
  e.preventDefault();
  enter(e.submitter && e.submitter.value === "create" ? "create" : "join");
});
ui.refresh.addEventListener("click", () => listRooms());
ui.say.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = ui.line.value;
  if (!session || !session.active || text.trim() === "") return;
  if (say(text)) ui.line.value = "";
  ui.line.focus();
});
ui.leave.addEventListener("click", leave);
ui.confirm.addEventListener("submit", (e) => {
  e.preventDefault();
  const reason = ui.reason.value.trim();
  const problem = reasonProblem(reason);
  if (problem) {
    notice(problem);
    ui.reason.focus();
    return;
  }
  ui.confirm.hidden = true;
  command(ui.confirm.dataset.command, ui.confirm.dataset.name, reason);
  ui.line.focus();
});
ui.confirmCancel.addEventListener("click", () => {
  ui.confirm.hidden = true;
  ui.line.focus();
});
addEventListener("pagehide", () => {
  if (session && session.active && conn) {
    conn.send({ op: "leave" });
    conn.close();
    conn = null;
    session.leftWithPage = true;
  }
});
// Back to a page kept in the browser's cache: its room was left on the way out.
addEventListener("pageshow", (e) => {
  if (e.persisted && session && session.leftWithPage) end(sentences.leftWithPage(session.room));
});

showLobby();
listRooms();
ui.name.focus();
